"""Figure 'length_dist': token lengths of the training splits with the percentile cut."""
import json
import logging

import pandas as pd

from dppo.plotting import fig_length_dist, save_figure

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
datasets = {}
for key, title in (("sft", "SFT"), ("pref", "preference")):
    with open(snakemake.input[f"{key}_stats"]) as fh:
        stats = json.load(fh)
    lengths = pd.read_parquet(snakemake.input[f"{key}_lengths"])["length"]
    datasets[title] = (stats, lengths)
    logging.info("%s: %d rows, cut-off %s", key, len(lengths), stats.get("cutoff"))
save_figure(fig_length_dist(datasets), snakemake.output.pdf, snakemake.output.png)
logging.info("wrote %s and %s", snakemake.output.pdf, snakemake.output.png)
