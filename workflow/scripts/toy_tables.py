"""Toy tables: final probabilities (CSV + LaTeX), the property checks (CSV + LaTeX), the
output-row changes of the zero-gradient check (CSV + LaTeX) and the LaTeX macros."""
import logging

import pandas as pd

from dppo.report.result_files import write_table
from dppo.runtime.io import write_text
from dppo.runtime.stage import stage
from dppo.settings import ToySettings
from dppo.toy import summary

with stage(snakemake):
    runs = pd.read_parquet(snakemake.input.runs)
    settings = ToySettings.from_dict(snakemake.params.toy)
    table = summary.final_table(runs)
    checks = summary.property_checks(table, loss=settings.dynamics_loss)
    rows = summary.output_row_table(runs, settings.losses)
    out = snakemake.output
    write_table(table, out.csv, out.tex, summary.latex_final_table(table))
    write_table(checks, out.properties, out.properties_tex, summary.latex_property_table(checks))
    write_table(rows, out.output_rows, out.output_rows_tex, summary.latex_output_row_table(rows))
    write_text(out.macros, summary.latex_macros(table, checks, settings, rows))
    logging.info("property checks (%s):\n%s", settings.dynamics_loss, checks.to_string())
    logging.info("output-row changes (zero-gradient check):\n%s", rows.to_string())
