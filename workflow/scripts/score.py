"""Score one generations parquet into a scores parquet (Snakemake script; logic in dppo.rewards).

params: reward (the config's ``reward`` section: backend and its options).
"""
import logging

import pandas as pd

from dppo.io import write_parquet
from dppo.rewards import reward_backend_from_config, score_generations

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
generations = pd.read_parquet(snakemake.input.generations)
section = dict(snakemake.params.reward)
logging.info("scoring %d responses of %s with %s", len(generations), snakemake.input.generations, section)
scores = score_generations(generations, reward_backend_from_config(section))
write_parquet(snakemake.output.scores, scores)
logging.info("wrote %s: mean reward %.4f, %.1f%% negative", snakemake.output.scores,
             scores["reward"].mean(), 100 * (scores["reward"] < 0).mean())
