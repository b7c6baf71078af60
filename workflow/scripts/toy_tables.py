"""Toy tables: final probabilities (CSV + LaTeX), the property checks (CSV + LaTeX), the
output-row changes of the zero-gradient check (CSV + LaTeX) and the LaTeX macros."""
import logging

import pandas as pd

from dppo.runtime.io import atomic_output_file, write_text
from dppo.runtime.stage import stage
from dppo.settings import ToySettings
from dppo.toy import summary

with stage(snakemake):
    runs = pd.read_parquet(snakemake.input.runs)
    settings = ToySettings.from_dict(snakemake.params.toy)
    table = summary.final_table(runs)
    checks = summary.property_checks(table, loss=settings.dynamics_loss)
    rows = summary.output_row_table(runs, settings.losses)
    for frame, path in ((table, snakemake.output.csv), (checks, snakemake.output.properties),
                        (rows, snakemake.output.output_rows)):
        with atomic_output_file(path) as tmp:
            frame.to_csv(tmp, index=False)
    write_text(snakemake.output.tex, summary.latex_final_table(table))
    write_text(snakemake.output.properties_tex, summary.latex_property_table(checks))
    write_text(snakemake.output.output_rows_tex, summary.latex_output_row_table(rows))
    write_text(snakemake.output.macros, summary.latex_macros(table, checks, settings, rows))
    logging.info("property checks (%s):\n%s", settings.dynamics_loss, checks.to_string())
    logging.info("output-row changes (zero-gradient check):\n%s", rows.to_string())
