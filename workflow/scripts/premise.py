"""results/tables/premise.json: the DPPO premise on this run's training rows (dppo.premise)."""
import json
import logging

from dppo.io import write_json
from dppo.premise import premise_stats
from dppo.rows import load_training_rows
from dppo.settings import RewardSettings
from dppo.stage import stage

with stage(snakemake):
    rows = load_training_rows(snakemake.input.train, snakemake.input.ygen, snakemake.input.ref)
    stats = premise_stats(rows, RewardSettings.from_dict(snakemake.params.reward, "reward"))
    write_json(snakemake.output[0], stats)
    logging.info("premise: %s", json.dumps(stats))
