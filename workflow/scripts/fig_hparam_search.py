"""Figure 'hparam_search' from the win-rate table (logic in dppo.plotting)."""
from dppo.io import save_figure
from dppo.plotting import fig_hparam_search
from dppo.results import read_win_rates
from dppo.stage import stage

with stage(snakemake):
    save_figure(fig_hparam_search(read_win_rates(snakemake.input.win_rates)), *snakemake.output)
