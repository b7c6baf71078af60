"""Figure 'differences': every experiment's paired difference from the baseline (dppo.plotting)."""
from dppo.io import save_figure
from dppo.plotting import fig_differences
from dppo.results import read_win_rates
from dppo.stage import stage

with stage(snakemake):
    save_figure(fig_differences(read_win_rates(snakemake.input.win_rates)), *snakemake.output)
