"""Verdicts on the poster's claims from paired tests (logic in dppo.claims)."""
import logging

from dppo.claims import test_claims
from dppo.results import read_prompt_scores, read_win_rates, write_claims
from dppo.settings import ClaimsSettings, WinRateSettings
from dppo.stage import stage
from dppo.winrate import per_prompt

with stage(snakemake):
    table = test_claims(read_win_rates(snakemake.input.win_rates), per_prompt(read_prompt_scores(snakemake.input.prompts)),
                        ClaimsSettings.from_dict(snakemake.params.claims, "claims"),
                        WinRateSettings.from_dict(snakemake.params.win_rate, "win_rate"))
    for row in table.itertuples():
        logging.info("%s: %s (%s) %s", row.claim, row.verdict, row.test, row.note if isinstance(row.note, str) else "")
    write_claims(table, snakemake.output.csv, snakemake.output.tex)
