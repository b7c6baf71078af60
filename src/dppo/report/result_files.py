"""The results files the report writes and reads: each table as CSV (for the figures and the
paper's macros) beside its LaTeX (for the PDF), both written atomically; the per-prompt scores;
the per-step training metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dppo.report.table_latex import claims_latex, penalty_scale_latex, win_rates_caption, win_rates_latex
from dppo.report.win_rate_table import TEXT_COLUMNS
from dppo.runtime.io import atomic_output_file, write_text


def write_csv(table: pd.DataFrame, path) -> None:
    """``table`` as CSV (no index), written atomically."""
    with atomic_output_file(path) as tmp:
        table.to_csv(tmp, index=False)


def write_table(table: pd.DataFrame, csv_path, tex_path, tex: str) -> None:
    """``table`` as CSV and its typeset form ``tex`` as LaTeX, each written atomically."""
    write_csv(table, csv_path)
    write_text(tex_path, tex)


def write_win_rates(table: pd.DataFrame, long: pd.DataFrame, csv_path, prompts_path, tex_path, level: float) -> None:
    """The win-rate table (CSV and LaTeX, intervals at ``level``) and the per-(model, seed,
    prompt) scores."""
    write_table(table, csv_path, tex_path, win_rates_latex(table, level, win_rates_caption(table, level)))
    with atomic_output_file(prompts_path) as tmp:
        long.to_parquet(tmp, index=False)


def read_win_rates(path: str | Path) -> pd.DataFrame:
    """The win-rate table; an empty text cell reads as None, not the string 'nan'."""
    df = pd.read_csv(path, dtype={"seeds": str})
    for column in TEXT_COLUMNS:
        if column in df:
            df[column] = df[column].where(df[column].notna(), None)
    return df


def read_prompt_scores(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_claims(table: pd.DataFrame, csv_path, tex_path) -> None:
    """The verdicts on the poster's claims (:func:`dppo.evaluate.claims.test_claims`)."""
    write_table(table, csv_path, tex_path, claims_latex(table))


def read_claims(path) -> pd.DataFrame:
    return pd.read_csv(path)


def write_penalty_scale(table: pd.DataFrame, csv_path, tex_path) -> None:
    """The penalty's gradient weight against DPO's (:func:`dppo.evaluate.penalty_scale.penalty_scale`)."""
    write_table(table, csv_path, tex_path, penalty_scale_latex(table))


def read_penalty_scale(path) -> pd.DataFrame:
    return pd.read_csv(path)


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Per-step training metrics (JSON lines); an empty file gives an empty table."""
    path = Path(path)
    if path.stat().st_size == 0:
        return pd.DataFrame(columns=["step"])
    return pd.read_json(path, lines=True)
