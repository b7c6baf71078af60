"""Figure 'data_efficiency' from the win-rate table (Snakemake script; logic in dppo.plotting)."""
import json
import logging

from dppo.paper import train_count
from dppo.plotting import fig_data_efficiency, read_win_rates, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
win_rates = read_win_rates(snakemake.input.win_rates)
with open(snakemake.input.pref_stats) as fh:
    n_full = train_count(json.load(fh), "rows_kept")  # runs without n_train use every kept row
logging.info("%d experiments in %s; full preference set: %d rows", len(win_rates),
             snakemake.input.win_rates, n_full)
save_figure(fig_data_efficiency(win_rates, n_full), snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
