"""Run every toy experiment (scenario x seed x loss) and write the per-step records."""
import logging
import os

import torch
from tqdm import tqdm

from dppo import toy

torch.set_num_threads(snakemake.threads)  # deterministic and polite on a shared CPU
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
settings = toy.ToySettings.from_config(snakemake.params.toy)
logging.info("settings: %s", settings)
with open(snakemake.log[0], "a") as log_stream:
    runs, step1 = toy.run_all(settings, progress=lambda jobs: tqdm(jobs, desc="toy scenario x seed", file=log_stream))
for _, row in step1.iterrows():
    logging.info("scenario %d seed %d: step-1 KL %.2e, y_gen %s", row.scenario, row.seed, row.step1_kl, row.y_gen)
diverged = runs.groupby(["scenario", "loss", "seed"])["diverged"].any()
for key in diverged[diverged].index:
    logging.warning("diverged (non-finite loss or gradient, or a probability underflowed float64): scenario %s loss %s seed %s", *key)
# Write-then-rename, so an interrupted job never leaves a half-written file behind.
for frame, path in ((runs, snakemake.output.runs), (step1, snakemake.output.step1)):
    tmp = f"{path}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
logging.info("wrote %d records to %s", len(runs), snakemake.output.runs)
