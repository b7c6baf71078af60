"""Win rates against the SFT model: results/tables/win_rates.csv and paper/tables/win_rates.tex
(logic in dppo.winrate, table files in dppo.results)."""
import json
import logging
from pathlib import Path

import pandas as pd

from dppo.results import write_win_rates
from dppo.settings import WinRateSettings
from dppo.stage import stage
from dppo.winrate import win_rate_table

REFERENCE = "sft"

with stage(snakemake):
    settings = WinRateSettings.from_dict(snakemake.params.win_rate, "win_rate")
    scores = {Path(path).stem: pd.read_parquet(path) for path in snakemake.input.scores}
    experiments = json.loads(Path(snakemake.input.experiments).read_text())
    table = win_rate_table(scores, experiments, REFERENCE, settings)
    logging.info("%s (reference): mean reward %.3f, %.1f%% negative", REFERENCE,
                 table["mean_reward_reference"].iloc[0], 100 * table["frac_negative_reference"].iloc[0])
    for row in table.itertuples():
        logging.info("%s: win rate %.3f [%.3f, %.3f], mean reward %.3f, %.1f%% negative, %d prompts", row.name,
                     row.win_rate, row.ci_low, row.ci_high, row.mean_reward, 100 * row.frac_negative, row.n_prompts)
    write_win_rates(table, snakemake.output.csv, snakemake.output.tex, settings.level, REFERENCE)
