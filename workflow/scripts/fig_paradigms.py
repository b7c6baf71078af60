"""Figure 'paradigms' from the win-rate table (logic in dppo.plotting)."""
from dppo.io import save_figure
from dppo.plotting import fig_paradigms
from dppo.results import read_win_rates
from dppo.stage import stage

with stage(snakemake):
    save_figure(fig_paradigms(read_win_rates(snakemake.input.win_rates)), *snakemake.output)
