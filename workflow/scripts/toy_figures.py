"""The toy figures (dynamics, gradients, grid) from the per-step records (dppo.toy.plots)."""
import pandas as pd

from dppo.runtime.io import save_figure
from dppo.runtime.stage import stage
from dppo.toy import plots

with stage(snakemake):
    runs = pd.read_parquet(snakemake.input.runs)
    loss = snakemake.params.loss
    figures = [plots.plot_dynamics(runs, loss=loss), plots.plot_gradients(runs, loss=loss), plots.plot_grid(runs)]
    # the outputs are (pdf, png) per figure, in the rule's TOY_FIGURES order
    for fig, (pdf, png) in zip(figures, zip(snakemake.output[::2], snakemake.output[1::2])):
        save_figure(fig, pdf, png)
