"""Toy tables: final probabilities (CSV + LaTeX), the property checks and the LaTeX macros."""
import logging
from pathlib import Path

import pandas as pd

from dppo import toy

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
runs = pd.read_parquet(snakemake.input.runs)
settings = toy.ToySettings.from_config(snakemake.params.toy)
table = toy.final_table(runs)
checks = toy.property_checks(table, loss=snakemake.params.loss)
for path in snakemake.output:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
table.to_csv(snakemake.output.csv, index=False)
checks.to_csv(snakemake.output.properties, index=False)
Path(snakemake.output.tex).write_text(toy.latex_final_table(table))
Path(snakemake.output.macros).write_text(toy.latex_macros(table, checks, settings))
logging.info("property checks (%s):\n%s", snakemake.params.loss, checks.to_string())
