"""The results tables: the win-rate table's columns, and the one place it is written
(CSV for the figures and the paper, booktabs LaTeX for the PDF) and read back; the data
statistics and per-step metrics readers beside it."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dppo.report.latex import booktabs_table, latex_escape
from dppo.runtime.io import atomic_output_file

EXPERIMENT_COLUMNS = ("name", "label", "group", "loss", "f", "alpha", "beta", "zeta", "unll_level", "n_train",
                      "seeds", "init")
INTEGER_COLUMNS = ("n_train", "n_seeds", "n_prompts", "n_wins", "n_ties", "n_losses")


def win_rate_table(experiments: list[dict], against_sft: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment of ``experiments`` (``results/experiments.json``), in that order:
    its settings, its comparison with SFT and its paired difference from the baseline."""
    settings = pd.DataFrame([{c: (" ".join(map(str, e[c])) if c == "seeds" else e.get(c)) for c in EXPERIMENT_COLUMNS}
                             for e in experiments])
    table = settings.merge(against_sft, on="name", how="left").merge(paired, on="name", how="left")
    # Nullable integers: an experiment without n_train must not turn 100 into "100.0".
    return table.astype({col: "Int64" for col in INTEGER_COLUMNS if col in table})


def write_win_rates(table: pd.DataFrame, long: pd.DataFrame, csv_path, prompts_path, tex_path, level: float) -> None:
    """The win-rate table (CSV and booktabs LaTeX) and the per-(model, seed, prompt) scores,
    each written atomically."""
    with atomic_output_file(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_output_file(prompts_path) as tmp:
        long.to_parquet(tmp, index=False)
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "--"
    caption = (f"Win rate against the SFT model on the held-out prompts (a tie counts one half; per prompt the mean "
               f"over seeds), and its paired difference from \\texttt{{{latex_escape(baseline)}}} on the same prompts, "
               f"with {100 * level:g}\\% percentile-bootstrap intervals over prompts; the share of negative rewards "
               f"and its paired difference. MDE: the difference in win rate each comparison detects with 80\\% power.")
    with atomic_output_file(tex_path) as tmp:
        tmp.write_text(latex_table(table, caption=caption))


def read_win_rates(path: str | Path) -> pd.DataFrame:
    """The win-rate table; an empty text cell reads as None, not the string 'nan'."""
    df = pd.read_csv(path, dtype={"seeds": str})
    for column in ("label", "group", "loss", "f", "unll_level", "init", "baseline", "seeds"):
        if column in df:
            df[column] = df[column].where(df[column].notna(), None)
    return df


def read_prompt_scores(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Per-step training metrics (JSON lines); an empty file gives an empty table."""
    path = Path(path)
    if path.stat().st_size == 0:
        return pd.DataFrame(columns=["step"])
    return pd.read_json(path, lines=True)


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


def _interval(row, column: str, digits: int) -> str:
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    return "--" if _missing(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def latex_table(df: pd.DataFrame, caption: str, label: str = "tab:win-rates", digits: int = 3) -> str:
    """A booktabs table of :func:`win_rate_table`'s rows: a first line for the SFT model (its
    share of negative rewards), then the experiments with a ``\\midrule`` between groups."""
    header = (r"Experiment & $\alpha$ & $n_{\mathrm{train}}$ & seeds & Win rate & 95\% CI & $\Delta$ vs.\ baseline"
              r" & 95\% CI & MDE & Neg.\ share & $\Delta$ neg. & 95\% CI")
    body: list = []
    if len(df):
        body += [[r"\texttt{sft}", "--", "--", "--", "--", "--", "--", "--", "--",
                  _number(df.iloc[0]["frac_negative_reference"], digits), "--", "--"], r"\midrule"]
    previous_group = None
    for row in df.to_dict("records"):
        if previous_group is not None and row.get("group") != previous_group:
            body.append(r"\midrule")
        previous_group = row.get("group")
        body.append([
            r"\texttt{" + latex_escape(row["name"]) + "}", _plain(row.get("alpha")), _plain(row.get("n_train")),
            _plain(row.get("n_seeds")), _number(row["win_rate"], digits), _interval(row, "win_rate", digits),
            _number(row.get("d_win_rate"), digits), _interval(row, "d_win_rate", digits),
            _number(row.get("d_win_rate_mde"), digits), _number(row["frac_negative"], digits),
            _number(row.get("d_frac_negative"), digits), _interval(row, "d_frac_negative", digits),
        ])
    return booktabs_table("lrrrrcrcrrrc", header, body, caption, label)


# ----------------------------------------------------------------------------- claims, penalty scale


def _write_csv_and_tex(table: pd.DataFrame, csv_path, tex_path, tex: str) -> None:
    with atomic_output_file(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_output_file(tex_path) as tmp:
        tmp.write_text(tex)


def write_claims(table: pd.DataFrame, csv_path, tex_path) -> None:
    """The verdicts on the poster's claims (:func:`dppo.evaluate.claims.test_claims`): CSV and LaTeX."""
    body = []
    for row in table.to_dict("records"):
        tested = row["verdict"] != "not tested"
        interval = f"[{row['low']:+.3f}, {row['high']:+.3f}]" if tested else "--"
        body.append([latex_escape(row["statement"]), latex_escape(row["test"]),
                     f"{row['diff']:+.3f}" if tested else "--", interval, f"{row['mde']:.3f}" if tested else "--",
                     r"\textbf{" + latex_escape(row["verdict"]) + "}"])
    caption = (r"The poster's claims, each with its test on the same held-out prompts (per prompt the mean over "
               r"seeds), its paired difference, the bootstrap interval, the minimum detectable difference (80\% "
               r"power) and the verdict.")
    tex = booktabs_table(r"p{0.23\textwidth}p{0.36\textwidth}rccr", r"Claim & Test & Difference & Interval & MDE & Verdict",
                         body, caption, "tab:claims", env="table*", placement="[t]", fit=False)
    _write_csv_and_tex(table, csv_path, tex_path, tex)


def read_claims(path) -> pd.DataFrame:
    return pd.read_csv(path)


def write_penalty_scale(table: pd.DataFrame, csv_path, tex_path) -> None:
    """The penalty's gradient weight against DPO's (:func:`dppo.evaluate.penalty_scale.penalty_scale`)."""
    body = [[r"\texttt{" + latex_escape(row["name"]) + "}", _plain(row["alpha"]), _number(row["ratio_first"], 2),
             _number(row["ratio_first_fired"], 2), _number(row["ratio_mean"], 2)] for row in table.to_dict("records")]
    caption = (r"Penalty scale: the penalty's gradient weight per $\ygen$ token over the DPO term's per $y_w$ token, "
               r"over the first epoch (the policy still near the SFT model, every row seen once; all rows, and the "
               r"rows where the penalty fires) and over all of training.")
    tex = booktabs_table("lrrrr", r"Experiment & $\alpha$ & ratio, first epoch & where it fires & over training", body,
                         caption, "tab:penalty-scale", placement="[t]")
    _write_csv_and_tex(table, csv_path, tex_path, tex)


def read_penalty_scale(path) -> pd.DataFrame:
    return pd.read_csv(path)
