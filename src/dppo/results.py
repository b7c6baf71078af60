"""The results tables: the win-rate table's columns, and the one place it is written
(CSV for the figures and the paper, booktabs LaTeX for the PDF) and read back; the data
statistics and per-step metrics readers beside it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dppo.io import atomic_output_file
from dppo.latex import latex_escape

EXPERIMENT_COLUMNS = ("name", "label", "group", "loss", "f", "alpha", "beta", "zeta", "n_train", "seed", "init")


TABLE_COLUMNS = (
    *EXPERIMENT_COLUMNS,
    "win_rate", "ci_low", "ci_high", "n_wins", "n_ties", "n_losses",
    "mean_reward", "frac_negative", "n_prompts", "mean_reward_reference", "frac_negative_reference",
)


INTEGER_COLUMNS = ("n_train", "seed", "n_wins", "n_ties", "n_losses", "n_prompts")


def write_win_rates(table: pd.DataFrame, csv_path, tex_path, level: float, reference: str) -> None:
    """``results/tables/win_rates.csv`` and its LaTeX table, each written atomically."""
    with atomic_output_file(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    caption = (f"Win rate against the SFT model on the held-out prompts (a tie counts one half), with its "
               f"{100 * level:g}\\% percentile-bootstrap interval over prompts, the mean reward and the share of "
               f"negative rewards.")
    with atomic_output_file(tex_path) as tmp:
        tmp.write_text(latex_table(table, caption=caption, reference=reference))


def read_win_rates(path: str | Path) -> pd.DataFrame:
    """The win-rate table; a loss without f (DPO) reads as NaN, not the string 'nan'."""
    df = pd.read_csv(path)
    for column in ("label", "group", "loss", "f"):
        if column in df:
            df[column] = df[column].where(df[column].notna(), None)
    return df


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Per-step training metrics (JSON lines); an empty file gives an empty table."""
    path = Path(path)
    if path.stat().st_size == 0:
        return pd.DataFrame(columns=["step"])
    return pd.read_json(path, lines=True)


def read_stats(path) -> dict:
    """A data preparation's ``stats.json``."""
    return json.loads(Path(path).read_text())


def train_count(stats: Mapping, key: str) -> int:
    """A count of ``stats.json`` for the TRAIN split (the file keeps one per split)."""
    value = stats.get(key, 0)
    if key == "dropped":
        value = value.get("train", value) if isinstance(value, Mapping) else value
        return int(sum(value.values())) if isinstance(value, Mapping) else int(value)
    return int(value.get("train", 0)) if isinstance(value, Mapping) else int(value)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _number(value, digits: int) -> str:
    return "--" if _missing(value) else f"{value:.{digits}f}"


def _plain(value) -> str:
    if _missing(value):
        return "--"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return latex_escape(value)


def latex_table(df: pd.DataFrame, caption: str = "Win rate against the SFT model.", label: str = "tab:win-rates",
                digits: int = 3, reference: str = "sft") -> str:
    """A booktabs table of :func:`win_rate_table`'s output: a first line for the reference
    model (its mean reward and share of negative rewards), then the experiments with a
    ``\\midrule`` between groups."""
    header = (r"Experiment & Method & $\alpha$ & $n_{\mathrm{train}}$ & Win rate & 95\% CI"
              r" & Mean reward & Neg.\ share \\")
    lines = [
        r"\begin{table}", r"\centering", r"\small",
        # Typeset into a box first, to shrink it to the line width only if it is wider.
        r"\setbox0=\hbox{%", r"\begin{tabular}{llrrrcrr}", r"\toprule", header, r"\midrule",
    ]
    if len(df):
        first = df.iloc[0]
        cells = [r"\texttt{" + latex_escape(reference) + "}", "reference", "--", "--", "--", "--",
                 _number(first["mean_reward_reference"], digits), _number(first["frac_negative_reference"], digits)]
        lines += [" & ".join(cells) + r" \\", r"\midrule"]
    previous_group = None
    for row in df.to_dict("records"):
        if previous_group is not None and row.get("group") != previous_group:
            lines.append(r"\midrule")
        previous_group = row.get("group")
        ci = "--" if _missing(row["ci_low"]) else f"[{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
        cells = [
            r"\texttt{" + latex_escape(row["name"]) + "}", _plain(row.get("label")), _plain(row.get("alpha")),
            _plain(row.get("n_train")), _number(row["win_rate"], digits), ci,
            _number(row["mean_reward"], digits), _number(row["frac_negative"], digits),
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule", r"\end{tabular}}%",
        # \resizebox needs graphicx; without it the table keeps its natural width.
        r"\ifdim\wd0>\linewidth\ifdefined\resizebox\resizebox{\linewidth}{!}{\box0}\else\box0\fi\else\box0\fi",
        r"\caption{" + caption + "}", r"\label{" + label + "}", r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
