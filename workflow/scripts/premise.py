"""results/tables/premise.json: the DPPO premise on this run's training rows (dppo.evaluate.premise)."""
import json
import logging

from dppo.evaluate.premise import premise_stats
from dppo.runtime.io import write_json
from dppo.runtime.stage import stage
from dppo.settings import RewardSettings
from dppo.train.rows import load_training_rows

with stage(snakemake):
    rows = load_training_rows(snakemake.input.train, snakemake.input.ygen, snakemake.input.ref)
    stats = premise_stats(rows, RewardSettings.from_dict(snakemake.params.reward, "reward"))
    write_json(snakemake.output[0], stats)
    logging.info("premise: %s", json.dumps(stats))
