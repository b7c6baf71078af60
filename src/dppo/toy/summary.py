"""Summaries of the toy runs for the paper: per-run and per-scenario tables, the checks of the
seed's three properties, and the LaTeX table and macros of the toy section."""

from __future__ import annotations

import math

import pandas as pd

from dppo.latex import latex_number, macro_name, render_macros
from dppo.settings import ToySettings

SCENARIO_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four"}


FINAL_METRICS = ("p_chosen", "p_rejected", "p_unseen", "p_outside")


def per_run_summary(runs: pd.DataFrame, collapse_below: float = 1e-6) -> pd.DataFrame:
    """One row per (scenario, loss, seed): initial, peak and final values of the recorded
    probabilities, the step of the chosen peak, the lowest outside mass, the first step at
    which the rejected mass is below ``collapse_below`` (NaN if never), the initial and final
    gradient magnitudes and whether the run diverged (then "final" is its last valid state)."""

    def summarise(run: pd.DataFrame) -> pd.Series:
        run = run.sort_values("step")
        first, last = run.iloc[0], run.iloc[-1]
        peak_row = run.loc[run["p_chosen"].idxmax()]
        collapsed = run.loc[run["p_rejected"] < collapse_below, "step"]
        row = {f"{m}_initial": first[m] for m in FINAL_METRICS}
        row.update({f"{m}_final": last[m] for m in FINAL_METRICS})
        row.update(
            p_chosen_peak=peak_row["p_chosen"],
            peak_step=peak_row["step"],
            p_unseen_max=run["p_unseen"].max(),
            p_outside_min=run["p_outside"].min(),
            rejected_collapse_step=collapsed.min() if len(collapsed) else math.nan,
            # share of (pair, step) with r < 0, i.e. where a DPPO penalty is switched on
            r_negative_share=run["part_frac_r_neg"].mean() if "part_frac_r_neg" in run else math.nan,
            grad_chosen_initial=first["grad_chosen"],
            grad_rejected_initial=first["grad_rejected"],
            grad_chosen_final=last["grad_chosen"],
            grad_rejected_final=last["grad_rejected"],
            last_step=last["step"],
            diverged=bool(run["diverged"].any()),
        )
        return pd.Series(row)

    keys = ["scenario", "loss", "seed"]
    return runs.groupby(keys, sort=False)[list(runs.columns.difference(keys))].apply(summarise).reset_index()


def final_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, loss): mean and standard deviation over seeds of :func:`per_run_summary`,
    and how many seeds ran and diverged. Losses keep their configured order."""
    summary = per_run_summary(runs)
    numeric = [c for c in summary.columns if c not in ("scenario", "loss", "seed", "diverged")]
    grouped = summary.groupby(["scenario", "loss"], sort=False)
    table = grouped[numeric].mean().add_suffix("_mean").join(grouped[numeric].std(ddof=0).add_suffix("_sd"))
    table["n_seeds"] = grouped.size()
    table["n_diverged"] = grouped["diverged"].sum().astype(int)
    return table.reset_index().sort_values("scenario", kind="stable").reset_index(drop=True)


def property_checks(table: pd.DataFrame, loss: str = "dpo", min_fall: float = 0.05) -> pd.DataFrame:
    """The seed's three properties, measured per scenario on the seed means of ``loss``:

    - drastic drop: the rejected mass falls by more decades than the chosen probability
      moves in either direction (log10 ratios initial -> final);
    - degradation: the chosen probability falls after its peak, by more than ``min_fall``
      (absolute) by the end of training;
    - dispersion: the mass on the two unseen responses ends above its initial value
      (``dispersion_unseen``), or, in the wider reading (every response outside the prompt's
      own pairs, i.e. also the other prompts' optimal responses), the outside mass climbs back
      by more than ``min_fall`` from its lowest point (``dispersion_outside``).
    """
    rows = []
    for _, row in table[table["loss"] == loss].iterrows():
        rejected_decades = math.log10(row["p_rejected_initial_mean"] / row["p_rejected_final_mean"])
        chosen_decades = abs(math.log10(row["p_chosen_final_mean"] / row["p_chosen_initial_mean"]))
        fall = row["p_chosen_peak_mean"] - row["p_chosen_final_mean"]
        rows.append(
            {
                "scenario": int(row["scenario"]),
                "loss": loss,
                "rejected_decades": rejected_decades,
                "chosen_decades": chosen_decades,
                "drastic_drop": rejected_decades > chosen_decades,
                "chosen_fall_after_peak": fall,
                "degradation": fall > min_fall,
                "dispersion_unseen": row["p_unseen_final_mean"] > row["p_unseen_initial_mean"],
                "outside_rise_from_min": row["p_outside_final_mean"] - row["p_outside_min_mean"],
                "dispersion_outside": row["p_outside_final_mean"] - row["p_outside_min_mean"] > min_fall,
            }
        )
    return pd.DataFrame(rows)


# The hyper-parameters each loss actually uses (for the settings macros).
LOSS_FIELDS = {
    "dpo": ("beta",),
    "ipo": ("tau",),
    "slic": ("slic_delta", "slic_lambda"),
    "flex_dpo": ("beta_w", "beta_l"),
    "dpo_sft": ("beta", "sft_lambda"),
    "minll": ("beta", "alpha"),
    "unll": ("beta", "alpha"),
    "conll": ("beta", "alpha"),
}


MACRO_METRICS = {
    "ChosenInitial": "p_chosen_initial_mean",
    "ChosenPeak": "p_chosen_peak_mean",
    "ChosenPeakStep": "peak_step_mean",
    "ChosenFinal": "p_chosen_final_mean",
    "RejectedInitial": "p_rejected_initial_mean",
    "RejectedFinal": "p_rejected_final_mean",
    "UnseenInitial": "p_unseen_initial_mean",
    "UnseenFinal": "p_unseen_final_mean",
    "OutsideInitial": "p_outside_initial_mean",
    "OutsideMin": "p_outside_min_mean",
    "OutsideFinal": "p_outside_final_mean",
    "RejectedCollapseStep": "rejected_collapse_step_mean",
    "GradChosenInitial": "grad_chosen_initial_mean",
    "GradRejectedInitial": "grad_rejected_initial_mean",
    "GradChosenFinal": "grad_chosen_final_mean",
    "GradRejectedFinal": "grad_rejected_final_mean",
    "RNegativeShare": "r_negative_share_mean",
    "Diverged": "n_diverged",
}


def _step_text(value: float) -> str:
    return "never" if value != value else str(round(value))


def latex_macros(table: pd.DataFrame, checks: pd.DataFrame, settings: ToySettings) -> str:
    """``\\newcommand`` lines for every number the toy section quotes, so none is typed by hand:
    ``\\toyScen<One..Four><Loss><Metric>``, the property verdicts ``\\toyScen<N>Dpo<Property>``
    (yes/no), and the run settings ``\\toyNumSeeds``, ``\\toySteps`` ..."""
    m: dict[str, str] = {}
    for _, row in table.iterrows():
        prefix = macro_name("toyScen", SCENARIO_WORDS[int(row["scenario"])], row["loss"])
        for suffix, column in MACRO_METRICS.items():
            value = row[column]
            whole = suffix in ("Diverged", "ChosenPeakStep", "RejectedCollapseStep")
            m[prefix + suffix] = _step_text(value) if whole else latex_number(value)
    for _, row in checks.iterrows():
        prefix = macro_name("toyScen", SCENARIO_WORDS[int(row["scenario"])], row["loss"])
        for suffix, column in (
            ("DrasticDrop", "drastic_drop"),
            ("Degradation", "degradation"),
            ("DispersionUnseen", "dispersion_unseen"),
            ("DispersionOutside", "dispersion_outside"),
        ):
            m[prefix + suffix] = "yes" if row[column] else "no"
        m[prefix + "RejectedDecades"] = f"{row['rejected_decades']:.0f}"
        m[prefix + "ChosenDecades"] = f"{row['chosen_decades']:.2f}"
    for loss in dict.fromkeys(table["loss"]):
        rows = table[table["loss"] == loss].set_index("scenario")
        for what, column in (("Peak", "p_chosen_peak_mean"), ("Final", "p_chosen_final_mean")):
            m[macro_name("toy", loss, f"Highest{what}Scenario")] = str(int(rows[column].idxmax()))
    m["toyNumSeeds"] = str(len(settings.seeds))
    m["toySteps"] = str(settings.steps)
    m["toyLr"] = latex_number(settings.lr)
    m["toyHidden"] = str(settings.hidden)
    m["toySftSteps"] = str(settings.sft_steps)
    m["toyPairsPerPrompt"] = str(settings.pairs_per_prompt)
    for name, value in settings.initial.to_dict().items():
        m[macro_name("toyLevel", name)] = latex_number(value)
    for label, cfg in settings.losses.items():
        for field in LOSS_FIELDS[cfg.name]:
            m[macro_name("toy", label, field)] = latex_number(getattr(cfg, field))
    return render_macros(m, "Generated by dppo.toy.summary.latex_macros; do not edit.")


def latex_final_table(table: pd.DataFrame) -> str:
    """A tabular of the final probabilities (mean +- sd over seeds) per scenario and loss."""

    def cell(row: pd.Series, metric: str) -> str:
        # The sd of a probability to two decimals: a spread of 1e-30 reads as none.
        return f"{latex_number(row[metric + '_mean'])} $\\pm$ {row[metric + '_sd']:.2f}"

    lines = [
        r"\begin{tabular}{llccccc}",
        r"\hline",
        r"Scen. & Loss & peak $\pi(y^*)$ & final $\pi(y^*)$ & rejected mass & unseen mass & outside mass \\",
        r"\hline",
    ]
    previous = None
    for _, row in table.iterrows():
        scenario = int(row["scenario"])
        if previous is not None and scenario != previous:
            lines.append(r"\hline")
        mark = r"$^\dagger$" if row["n_diverged"] else ""
        loss = row["loss"].replace("_", r"\_") + mark
        lines.append(
            f"{scenario if scenario != previous else ''} & {loss} & {cell(row, 'p_chosen_peak')} & "
            f"{cell(row, 'p_chosen_final')} & {cell(row, 'p_rejected_final')} & "
            f"{cell(row, 'p_unseen_final')} & {cell(row, 'p_outside_final')} \\\\"
        )
        previous = scenario
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
