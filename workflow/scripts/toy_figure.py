"""One toy figure (params.figure: dynamics, gradients or grid) from the per-step records."""
import logging

import pandas as pd

from dppo import toy_plots

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
runs = pd.read_parquet(snakemake.input.runs)
figure = snakemake.params.figure
if figure == "dynamics":
    fig = toy_plots.plot_dynamics(runs, loss=snakemake.params.loss)
elif figure == "gradients":
    fig = toy_plots.plot_gradients(runs, loss=snakemake.params.loss)
elif figure == "grid":
    fig = toy_plots.plot_grid(runs)
else:
    raise ValueError(f"unknown toy figure {figure!r}")
toy_plots.save_figure(fig, snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
