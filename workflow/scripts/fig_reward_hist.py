"""Figure 'reward_hist': SFT vs DPO vs the best penalty variant (logic in dppo.report.plotting)."""
from pathlib import Path

import pandas as pd

from dppo.evaluate.run_selection import picked_files
from dppo.report.plotting import fig_reward_hist
from dppo.report.result_files import read_win_rates
from dppo.runtime.stage import stage

with stage(snakemake):
    runs = picked_files(read_win_rates(snakemake.input.win_rates), snakemake.input.scores,
                        snakemake.params.baseline, snakemake.params.dppo)
    scores = {"SFT": snakemake.input.sft, **runs}
    plot = fig_reward_hist({title: pd.read_parquet(path) for title, path in scores.items()},
                           runs={title: Path(path).stem for title, path in runs.items()})
    plot.save(snakemake.output.pdf, snakemake.output.png, snakemake.output.csv)
