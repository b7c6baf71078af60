"""Verdicts on the poster's claims from paired tests (logic in dppo.evaluate.claims)."""
import logging

from dppo.evaluate.claims import test_claims
from dppo.report.result_files import read_prompt_scores, read_win_rates, write_claims
from dppo.runtime.stage import stage
from dppo.settings import ClaimsSettings, WinRateSettings

with stage(snakemake):
    table = test_claims(read_win_rates(snakemake.input.win_rates), read_prompt_scores(snakemake.input.prompts),
                        ClaimsSettings.from_dict(snakemake.params.claims, "claims"),
                        WinRateSettings.from_dict(snakemake.params.win_rate, "win_rate"))
    for row in table.itertuples():
        logging.info("%s: %s (%s) %s", row.claim, row.verdict, row.test, row.note if isinstance(row.note, str) else "")
    write_claims(table, snakemake.output.csv, snakemake.output.tex)
