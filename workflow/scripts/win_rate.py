"""Win rates against the SFT model: results/tables/win_rates.csv and paper/tables/win_rates.tex
(Snakemake script; logic in dppo.winrate).

params: n_boot, seed, level (default 0.95), reference (default "sft").
"""
import json
import logging
from pathlib import Path

import pandas as pd

from dppo.io import atomic_output_file
from dppo.winrate import latex_table, win_rate_table

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
scores = {Path(path).stem: pd.read_parquet(path) for path in snakemake.input.scores}
with open(snakemake.input.experiments) as fh:
    experiments = json.load(fh)
level = float(snakemake.params.get("level", 0.95))
reference = snakemake.params.get("reference", "sft")
table = win_rate_table(scores, experiments, reference=reference,
                       n_boot=int(snakemake.params.n_boot), seed=int(snakemake.params.seed), level=level)
logging.info("%s (reference): mean reward %.3f, %.1f%% negative", reference,
             table["mean_reward_reference"].iloc[0], 100 * table["frac_negative_reference"].iloc[0])
for row in table.itertuples():
    logging.info("%s: win rate %.3f [%.3f, %.3f], mean reward %.3f, %.1f%% negative, %d prompts", row.name,
                 row.win_rate, row.ci_low, row.ci_high, row.mean_reward, 100 * row.frac_negative, row.n_prompts)
with atomic_output_file(snakemake.output.csv) as tmp:
    table.to_csv(tmp, index=False)
caption = (f"Win rate against the SFT model on the held-out prompts (a tie counts one half), with its "
           f"{100 * level:g}\\% percentile-bootstrap interval over prompts, the mean reward and the share of "
           f"negative rewards.")
with atomic_output_file(snakemake.output.tex) as tmp:
    tmp.write_text(latex_table(table, caption=caption, reference=reference))
logging.info("wrote %s and %s", snakemake.output.csv, snakemake.output.tex)
