"""One toy figure (wildcard figure: dynamics, gradients or grid) from the per-step records."""
import pandas as pd

from dppo.io import save_figure
from dppo.stage import stage
from dppo.toy import plots

with stage(snakemake):
    runs = pd.read_parquet(snakemake.input.runs)
    figure = snakemake.params.figure
    if figure == "grid":
        fig = plots.plot_grid(runs)
    else:
        fig = {"dynamics": plots.plot_dynamics, "gradients": plots.plot_gradients}[figure](runs, loss=snakemake.params.loss)
    save_figure(fig, *snakemake.output)
