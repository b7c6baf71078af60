"""Figure 'reward_hist': SFT vs DPO vs the best penalty variant (logic in dppo.plotting)."""
import pandas as pd

from dppo.claims import picked_files
from dppo.io import save_figure
from dppo.plotting import fig_reward_hist
from dppo.results import read_win_rates
from dppo.stage import stage

with stage(snakemake):
    runs = picked_files(read_win_rates(snakemake.input.win_rates), snakemake.input.scores,
                        snakemake.params.baseline, snakemake.params.dppo)
    scores = {"SFT": snakemake.input.sft, **runs}
    save_figure(fig_reward_hist({title: pd.read_parquet(path) for title, path in scores.items()}), *snakemake.output)
