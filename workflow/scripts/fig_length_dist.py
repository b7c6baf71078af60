"""Figure 'length_dist': token lengths of the training splits with the percentile cut."""
import pandas as pd

from dppo.data.stats import read_stats
from dppo.report.plotting import fig_length_dist
from dppo.runtime.stage import stage

with stage(snakemake):
    datasets = {
        title: (read_stats(snakemake.input[f"{key}_stats"]), pd.read_parquet(snakemake.input[f"{key}_lengths"])["length"])
        for key, title in (("sft", "SFT"), ("pref", "preference"))
    }
    fig_length_dist(datasets).save(snakemake.output.pdf, snakemake.output.png, snakemake.output.csv)
