"""Run every toy experiment (scenario x seed x loss, one batched computation) and write the
per-step records (dppo.toy)."""
import logging
import time

from dppo.runtime.io import write_parquet
from dppo.runtime.stage import stage
from dppo.settings import ToySettings
from dppo.toy.training import run_all

with stage(snakemake):
    settings = ToySettings.from_dict(snakemake.params.toy)
    logging.info("settings: %s", settings)
    start = time.perf_counter()
    runs, step1 = run_all(settings)
    logging.info("trained %d runs in %.1f s", runs.groupby(["scenario", "seed", "loss"]).ngroups, time.perf_counter() - start)
    for _, row in step1.iterrows():
        logging.info("scenario %d seed %d: step-1 KL %.2e, y_gen %s", row.scenario, row.seed, row.step1_kl, row.y_gen)
    diverged = runs.groupby(["scenario", "loss", "seed"])["diverged"].any()
    for key in diverged[diverged].index:
        logging.warning("diverged (non-finite loss or gradient, or a probability underflowed float64): "
                        "scenario %s loss %s seed %s", *key)
    write_parquet(snakemake.output.runs, runs)
    write_parquet(snakemake.output.step1, step1)
    logging.info("wrote %d records to %s", len(runs), snakemake.output.runs)
