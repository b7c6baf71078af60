"""Figure 'length_dist': token lengths of the training splits with the percentile cut."""
import pandas as pd

from dppo.io import save_figure
from dppo.plotting import fig_length_dist
from dppo.results import read_stats
from dppo.stage import stage

with stage(snakemake):
    datasets = {
        title: (read_stats(snakemake.input[f"{key}_stats"]), pd.read_parquet(snakemake.input[f"{key}_lengths"])["length"])
        for key, title in (("sft", "SFT"), ("pref", "preference"))
    }
    save_figure(fig_length_dist(datasets), *snakemake.output)
