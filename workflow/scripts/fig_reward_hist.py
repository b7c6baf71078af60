"""Figure 'reward_hist': SFT vs DPO vs the best penalty variant (logic in dppo.report.plotting)."""
import pandas as pd

from dppo.evaluate.run_selection import picked_files
from dppo.report.plotting import fig_reward_hist
from dppo.report.result_files import read_win_rates
from dppo.runtime.io import save_figure
from dppo.runtime.stage import stage

with stage(snakemake):
    runs = picked_files(read_win_rates(snakemake.input.win_rates), snakemake.input.scores,
                        snakemake.params.baseline, snakemake.params.dppo)
    scores = {"SFT": snakemake.input.sft, **runs}
    save_figure(fig_reward_hist({title: pd.read_parquet(path) for title, path in scores.items()}), *snakemake.output)
