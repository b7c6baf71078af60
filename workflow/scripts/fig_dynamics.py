"""Figure 'dynamics': log-probs over training, DPO vs the best penalty variant."""
import logging
from pathlib import Path

from dppo.paper import pick_runs
from dppo.plotting import fig_dynamics, read_metrics, read_win_rates, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
metric_files = {Path(p).stem: p for p in snakemake.input.metrics}
runs = pick_runs(read_win_rates(snakemake.input.win_rates))
metrics = {}
for key, title in (("dpo", "DPO"), ("dppo", None)):
    if key in runs and runs[key]["name"] in metric_files:
        metrics[title or runs[key]["label"]] = read_metrics(metric_files[runs[key]["name"]])
        logging.info("%s: run %s", key, runs[key]["name"])
    else:
        logging.info("%s: no run in this grid, left out", key)
save_figure(fig_dynamics(metrics), snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
