"""Figure 'paradigms' from the win-rate table (Snakemake script; logic in dppo.plotting)."""
import logging

from dppo.plotting import fig_paradigms, read_win_rates, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
win_rates = read_win_rates(snakemake.input.win_rates)
logging.info("%d experiments in %s", len(win_rates), snakemake.input.win_rates)
save_figure(fig_paradigms(win_rates), snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
