"""The toy figures (dynamics, gradients, grid) from the per-step records (dppo.toy.plots)."""
import pandas as pd

from dppo.runtime.stage import stage
from dppo.toy import plots

with stage(snakemake):
    runs = pd.read_parquet(snakemake.input.runs)
    loss = snakemake.params.loss
    figures = [plots.plot_dynamics(runs, loss=loss), plots.plot_gradients(runs, loss=loss), plots.plot_grid(runs)]
    # the outputs are (pdf, png, csv) per figure, in the rule's TOY_FIGURES order
    for plot, paths in zip(figures, zip(*(snakemake.output[k::3] for k in range(3)))):
        plot.save(*paths)
