"""The table of how far y_gen moved in each round (dppo.train.rounds.drift_table)."""
from dppo.runtime.io import atomic_output_file
from dppo.runtime.stage import stage
from dppo.train.rounds import drift_table

with stage(snakemake), atomic_output_file(snakemake.output[0]) as tmp:
    drift_table(snakemake.input).to_csv(tmp, index=False)
