"""Figure 'ygen_drift': how far on-policy y_gen moved from round to round."""
import pandas as pd

from dppo.report.plotting import fig_ygen_drift
from dppo.runtime.stage import stage

with stage(snakemake):
    fig_ygen_drift(pd.read_csv(snakemake.input.drift)).save(snakemake.output.pdf, snakemake.output.png,
                                                           snakemake.output.csv)
