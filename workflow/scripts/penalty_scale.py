"""The penalty's gradient weight against DPO's, per penalized experiment (dppo.evaluate.penalty_scale)."""
import json
from pathlib import Path

from dppo.evaluate.penalty_scale import penalty_scale
from dppo.report.result_files import read_metrics, write_penalty_scale
from dppo.runtime.stage import stage

with stage(snakemake):
    experiments = json.loads(Path(snakemake.input.experiments).read_text())
    metrics = {Path(p).stem: read_metrics(p) for p in snakemake.input.metrics}
    write_penalty_scale(penalty_scale(experiments, metrics), snakemake.output.csv, snakemake.output.tex)
