"""Run every toy experiment (scenario x seed x loss) and write the per-step records (dppo.toy)."""
import logging
import sys

from tqdm import tqdm

from dppo.io import write_parquet
from dppo.settings import ToySettings
from dppo.stage import stage
from dppo.toy.training import run_all

with stage(snakemake):
    settings = ToySettings.from_dict(snakemake.params.toy)
    logging.info("settings: %s", settings)
    runs, step1 = run_all(settings, progress=lambda jobs: tqdm(jobs, desc="toy scenario x seed", file=sys.stderr))
    for _, row in step1.iterrows():
        logging.info("scenario %d seed %d: step-1 KL %.2e, y_gen %s", row.scenario, row.seed, row.step1_kl, row.y_gen)
    diverged = runs.groupby(["scenario", "loss", "seed"])["diverged"].any()
    for key in diverged[diverged].index:
        logging.warning("diverged (non-finite loss or gradient, or a probability underflowed float64): "
                        "scenario %s loss %s seed %s", *key)
    write_parquet(snakemake.output.runs, runs)
    write_parquet(snakemake.output.step1, step1)
    logging.info("wrote %d records to %s", len(runs), snakemake.output.runs)
