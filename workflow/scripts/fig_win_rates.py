"""Figures 'hparam_search', 'paradigms' and 'differences' from the win-rate table (dppo.report.plotting)."""
from dppo.report import plotting
from dppo.report.result_files import read_win_rates
from dppo.runtime.stage import stage

with stage(snakemake):
    win_rates = read_win_rates(snakemake.input.win_rates)
    for name in ("hparam_search", "paradigms", "differences"):
        plot = getattr(plotting, f"fig_{name}")(win_rates)
        plot.save(*(snakemake.output[f"{name}_{ext}"] for ext in ("pdf", "png", "csv")))
