"""Score one generations parquet into a scores parquet (Snakemake script; logic in dppo.rewards).

params: backend (programmatic | seqcls | nemotron), options (dict of that backend's options).
"""
import logging

import pandas as pd

from dppo.io import write_parquet
from dppo.rewards import get_reward_backend, score_generations

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
generations = pd.read_parquet(snakemake.input.generations)
options = dict(snakemake.params.get("options") or {})
logging.info("scoring %d responses of %s with %s %s", len(generations), snakemake.input.generations,
             snakemake.params.backend, options)
scores = score_generations(generations, get_reward_backend(snakemake.params.backend, **options))
write_parquet(snakemake.output.scores, scores)
logging.info("wrote %s: mean reward %.4f, %.1f%% negative", snakemake.output.scores,
             scores["reward"].mean(), 100 * (scores["reward"] < 0).mean())
