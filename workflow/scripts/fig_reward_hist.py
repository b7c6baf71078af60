"""Figure 'reward_hist': SFT vs DPO vs the best penalty variant (logic in dppo.plotting)."""
import logging
from pathlib import Path

import pandas as pd

from dppo.paper import pick_runs
from dppo.plotting import fig_reward_hist, read_win_rates, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
score_files = {Path(p).stem: p for p in snakemake.input.scores}
runs = pick_runs(read_win_rates(snakemake.input.win_rates))
scores = {"SFT": pd.read_parquet(snakemake.input.sft)}
for key, title in (("dpo", "DPO"), ("dppo", None)):
    if key in runs and runs[key]["name"] in score_files:
        scores[title or runs[key]["label"]] = pd.read_parquet(score_files[runs[key]["name"]])
        logging.info("%s: run %s", key, runs[key]["name"])
    else:
        logging.info("%s: no run in this grid, left out", key)
save_figure(fig_reward_hist(scores), snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
