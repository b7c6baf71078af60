"""Every model against SFT and, paired on the same prompts, against the baseline experiment:
results/tables/win_rates.csv, its LaTeX table and the per-prompt scores (dppo.evaluate.winrate, dppo.report.result_files)."""
import json
import logging
from pathlib import Path

import pandas as pd

from dppo.evaluate.winrate import against_sft, paired_differences, per_prompt, per_seed_scores
from dppo.report.result_files import write_win_rates
from dppo.report.win_rate_table import win_rate_table
from dppo.runtime.stage import stage
from dppo.settings import WinRateSettings

with stage(snakemake):
    settings = WinRateSettings.from_dict(snakemake.params.win_rate, "win_rate")
    scores = {Path(path).stem: pd.read_parquet(path) for path in snakemake.input.scores}
    experiments = json.loads(Path(snakemake.input.experiments).read_text())
    names = [e["name"] for e in experiments]
    long = per_seed_scores(scores)
    prompts = per_prompt(long)
    table = win_rate_table(experiments, against_sft(long, prompts, names, settings),
                           paired_differences(prompts, names, settings.baseline, settings))
    for row in table.itertuples():
        logging.info("%s: win rate %.3f [%.3f, %.3f] (%d seeds); vs %s %+.3f [%+.3f, %+.3f], MDE %.3f", row.name,
                     row.win_rate, row.win_rate_low, row.win_rate_high, row.n_seeds, settings.baseline, row.d_win_rate,
                     row.d_win_rate_low, row.d_win_rate_high, row.d_win_rate_mde)
    write_win_rates(table, long, snakemake.output.csv, snakemake.output.prompts, snakemake.output.tex, settings.level)
