"""Figure 'data_efficiency' from the win-rate table (logic in dppo.report.plotting)."""
import logging

from dppo.data.stats import read_stats, train_count
from dppo.report.plotting import fig_data_efficiency
from dppo.report.result_files import read_win_rates
from dppo.runtime.stage import stage

with stage(snakemake):
    win_rates = read_win_rates(snakemake.input.win_rates)
    n_full = train_count(read_stats(snakemake.input.pref_stats), "rows_kept")  # runs without n_train use every kept row
    logging.info("%d experiments; full preference set: %d rows", len(win_rates), n_full)
    fig_data_efficiency(win_rates, n_full).save(snakemake.output.pdf, snakemake.output.png, snakemake.output.csv)
