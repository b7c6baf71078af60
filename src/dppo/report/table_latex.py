"""The results tables typeset as booktabs LaTeX for the PDF: the win rates, the claims'
verdicts and the penalty scale (the text helpers they share: :mod:`dppo.report.latex`)."""

from __future__ import annotations

import math

import pandas as pd

from dppo.report.latex import booktabs_table, latex_escape


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


def _percent(level: float) -> str:
    r"""A confidence level as LaTeX text: 0.95 -> '95\%'."""
    return f"{100 * level:g}\\%"


def win_rates_caption(table: pd.DataFrame, level: float) -> str:
    """What the win-rate table shows, naming its baseline and the intervals' level."""
    baseline = table["baseline"].dropna().iloc[0] if table["baseline"].notna().any() else "--"
    return (f"Win rate against the SFT model on the held-out prompts (a tie counts one half; per prompt the mean "
            f"over seeds), and its paired difference from \\texttt{{{latex_escape(baseline)}}} on the same prompts, "
            f"with {_percent(level)} percentile-bootstrap intervals over prompts; the share of negative rewards "
            f"and its paired difference. MDE: the difference in win rate each comparison detects with 80\\% power.")


def win_rates_latex(df: pd.DataFrame, level: float, caption: str, label: str = "tab:win-rates",
                    digits: int = 3) -> str:
    """A booktabs table of :func:`dppo.report.win_rate_table.win_rate_table`'s rows, with
    ``level`` intervals: a first line for the SFT model (its share of negative rewards), then the
    experiments with a ``\\midrule`` between groups."""
    ci = f"{_percent(level)} CI"
    header = (rf"Experiment & $\alpha$ & $n_{{\mathrm{{train}}}}$ & seeds & Win rate & {ci} & $\Delta$ vs.\ baseline"
              rf" & {ci} & MDE & Neg.\ share & $\Delta$ neg. & {ci}")
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


def claims_latex(table: pd.DataFrame) -> str:
    """The verdicts on the poster's claims (:func:`dppo.evaluate.claims.test_claims`)."""
    body = []
    for row in table.to_dict("records"):
        tested = row["verdict"] != "not tested"
        interval = f"[{row['low']:+.3f}, {row['high']:+.3f}]" if tested else "--"
        test = f"{row['test']} (interval over {row['over']})" if tested else row["test"]
        body.append([latex_escape(row["statement"]), latex_escape(test),
                     f"{row['diff']:+.3f}" if tested else "--", interval, f"{row['mde']:.3f}" if tested else "--",
                     r"\textbf{" + latex_escape(row["verdict"]) + "}"])
    caption = (r"The poster's claims, each with its test on the same held-out prompts, its paired difference, the "
               r"interval (Student's t over the seeds the two experiments share where they share two or more, else "
               r"the bootstrap over prompts of the seed means; either way conditional on this run's world and the "
               r"machine), the minimum detectable difference (80\% power) and the verdict.")
    return booktabs_table(r"p{0.23\textwidth}p{0.36\textwidth}rccr", r"Claim & Test & Difference & Interval & MDE & Verdict",
                          body, caption, "tab:claims", env="table*", placement="[t]")


def penalty_scale_latex(table: pd.DataFrame) -> str:
    """The penalty's gradient weight against DPO's (:func:`dppo.evaluate.penalty_scale.penalty_scale`)."""
    body = [[r"\texttt{" + latex_escape(row["name"]) + "}", _plain(row["alpha"]), _number(row["ratio_first"], 2),
             _number(row["ratio_first_fired"], 2), _number(row["ratio_mean"], 2)] for row in table.to_dict("records")]
    caption = (r"Penalty scale: the penalty's gradient weight per $\ygen$ token over the DPO term's per $y_w$ token, "
               r"over the first epoch (the policy still near the SFT model, every row seen once; all rows, and the "
               r"rows where the penalty fires) and over all of training.")
    return booktabs_table("lrrrr", r"Experiment & $\alpha$ & ratio, first epoch & where it fires & over training", body,
                          caption, "tab:penalty-scale", placement="[t]")
