"""Summaries of the toy runs for the paper: per-run and per-scenario tables, the checks of the
seed's three properties, and the LaTeX table and macros of the toy section."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from dppo.report.latex import latex_number, macro_name, render_macros
from dppo.settings import LossSettings, ToySettings
from dppo.toy.model import CHOSEN_IDS, SCENARIOS, initial_distribution

# The output-layer row sets whose change step 2 records (dppo.toy.training.OUTPUT_ROWS).
OUTPUT_ROWS = ("unseen", "rejected", "chosen")

SCENARIO_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four"}


FINAL_METRICS = ("p_chosen", "p_rejected", "p_unseen", "p_outside")


def per_run_summary(runs: pd.DataFrame, collapse_below: float = 1e-6) -> pd.DataFrame:
    """One row per (scenario, loss, seed): initial, peak and final values of the recorded
    probabilities, the step of the chosen peak, the lowest unseen and outside mass, the
    largest change of the unseen, rejected and chosen output-layer rows, the first step at
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
            p_unseen_min=run["p_unseen"].min(),
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
        for name in OUTPUT_ROWS:  # largest change of those output-layer rows over step 2
            column = f"out_change_{name}"
            row[f"{column}_max"] = run[column].max() if column in run else math.nan
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


def _dispersion(initial: float, lowest: float, final: float, min_rise: float) -> bool:
    """Mass dispersed onto a response set: it ends above where it started, or it climbs back by
    more than ``min_rise`` (absolute) from its lowest point (the degradation phase)."""
    return final > initial or final - lowest > min_rise


def property_checks(table: pd.DataFrame, loss: str = "dpo", min_fall: float = 0.05) -> pd.DataFrame:
    """The seed's three properties, measured per scenario on the seed means of ``loss``:

    - drastic drop: the rejected mass falls by more decades than the chosen probability
      moves in either direction (log10 ratios initial -> final);
    - degradation: the chosen probability falls after its peak, by more than ``min_fall``
      (absolute) by the end of training;
    - dispersion, in two readings, each by :func:`_dispersion` (with ``min_fall``):
      ``dispersion_unseen``, the seed's global reading, onto the two responses 9-10 that no
      pair of any prompt contains; ``dispersion_outside``, the per-prompt reading, onto every
      response outside the prompt's own pairs (the unseen ones and the other prompts' optimal
      responses).
    """
    rows = []
    for _, row in table[table["loss"] == loss].iterrows():
        rejected_decades = math.log10(row["p_rejected_initial_mean"] / row["p_rejected_final_mean"])
        chosen_decades = abs(math.log10(row["p_chosen_final_mean"] / row["p_chosen_initial_mean"]))
        fall = row["p_chosen_peak_mean"] - row["p_chosen_final_mean"]
        unseen = [row[f"p_unseen_{k}_mean"] for k in ("initial", "min", "final")]
        outside = [row[f"p_outside_{k}_mean"] for k in ("initial", "min", "final")]
        rows.append(
            {
                "scenario": int(row["scenario"]),
                "loss": loss,
                "rejected_decades": rejected_decades,
                "chosen_decades": chosen_decades,
                "drastic_drop": rejected_decades > chosen_decades,
                "chosen_fall_after_peak": fall,
                "degradation": fall > min_fall,
                **{f"unseen_{k}": v for k, v in zip(("initial", "min", "final"), unseen)},
                "unseen_rise_from_min": unseen[2] - unseen[1],
                "dispersion_unseen": _dispersion(*unseen, min_fall),
                **{f"outside_{k}": v for k, v in zip(("initial", "min", "final"), outside)},
                "outside_rise_from_min": outside[2] - outside[1],
                "dispersion_outside": _dispersion(*outside, min_fall),
            }
        )
    return pd.DataFrame(rows)


# Below this ratio to the change of the paired responses' rows, an output row counts as fixed:
# a zero gradient still moves it by float rounding (Adam divides by sqrt(v) + eps).
FIXED_RATIO = 1e-6


def margin_only(cfg: LossSettings, f_r_positive: bool) -> bool:
    """Does the loss depend on a pair's log-probabilities only through log pi(y_w) - log pi(y_l)?

    Then, with one-token responses, its gradient with respect to the logits is c (e_l - e_w)
    (adding a constant to every logit changes nothing), so the output-layer rows of every
    response outside the pairs get exactly zero gradient. True for dpo and ipo, for flex_dpo
    when beta_w = beta_l, and for the DPPO losses while f(r) = 0 on every pair (they are dpo
    then); not for slic or dpo_sft (a lone log pi(y_w) term) nor for a firing DPPO penalty.
    Each loss's answer is its record's (dppo.settings.LOSS_KINDS)."""
    if cfg.kind.penalizes_gen and f_r_positive:
        return False
    return cfg.kind.margin_only(cfg)


def output_row_table(runs: pd.DataFrame, losses: Mapping[str, LossSettings]) -> pd.DataFrame:
    """Per (scenario, loss): the largest change |theta_t - theta_0| over step 2 (and over seeds)
    of the output-layer rows (weights and bias) of the unseen, rejected and chosen responses;
    whether f(r) > 0 on some pair-step (a DPPO penalty fires there); whether :func:`margin_only` predicts
    the unseen rows fixed, and whether they are (their change below ``FIXED_RATIO`` times the
    smaller of the other two)."""
    grouped = runs.groupby(["scenario", "loss"], sort=False)
    table = grouped[[f"out_change_{rows}" for rows in OUTPUT_ROWS]].max()
    table.columns = [f"{rows}_change" for rows in OUTPUT_ROWS]
    # f(r) > 0 on some pair-step: a DPPO penalty fires there (recorded under every loss)
    table["f_r_positive"] = grouped["part_f_r"].agg(lambda f: bool((f.fillna(0) != 0).any()))
    table = table.reset_index()
    table["predicted_fixed"] = [
        margin_only(losses[loss], fired) for loss, fired in zip(table["loss"], table["f_r_positive"])
    ]
    paired = table[["rejected_change", "chosen_change"]].min(axis=1)
    table["unseen_fixed"] = table["unseen_change"] <= FIXED_RATIO * paired
    return table.sort_values("scenario", kind="stable").reset_index(drop=True)


MACRO_METRICS = {
    "ChosenInitial": "p_chosen_initial_mean",
    "ChosenPeak": "p_chosen_peak_mean",
    "ChosenPeakStep": "peak_step_mean",
    "ChosenFinal": "p_chosen_final_mean",
    "RejectedInitial": "p_rejected_initial_mean",
    "RejectedFinal": "p_rejected_final_mean",
    "UnseenInitial": "p_unseen_initial_mean",
    "UnseenMin": "p_unseen_min_mean",
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


def _yes(value) -> str:
    return "yes" if value else "no"


def _scenario_list(numbers) -> str:
    """"all", "none" or e.g. "S1, S3, S4"."""
    numbers = sorted(int(n) for n in numbers)
    if len(numbers) == len(SCENARIO_WORDS):
        return "all"
    return ", ".join(f"S{n}" for n in numbers) if numbers else "none"


def _output_row_macros(rows: pd.DataFrame) -> dict[str, str]:
    """Macros of :func:`output_row_table`: per scenario and loss ``\\toyScen<N><Loss>OutChange
    <Unseen|Rejected|Chosen>`` and ``...UnseenRows<Fixed|PredictedFixed>`` (yes/no); per loss the
    largest unseen change and the smallest rejected and chosen change over the scenarios
    (``\\toy<Loss>OutChangeUnseenMax`` ...), the scenarios where the rows are predicted fixed
    and where they are (``\\toy<Loss>UnseenRowsPredictedFixedIn``, ``...FixedIn``); and how many
    (scenario, loss) cells agree with the prediction."""
    m: dict[str, str] = {}
    for _, row in rows.iterrows():
        prefix = ("toyScen", SCENARIO_WORDS[int(row["scenario"])], row["loss"])
        for name in OUTPUT_ROWS:
            m[macro_name(*prefix, "OutChange", name)] = latex_number(row[f"{name}_change"])
        m[macro_name(*prefix, "UnseenRowsFixed")] = _yes(row["unseen_fixed"])
        m[macro_name(*prefix, "UnseenRowsPredictedFixed")] = _yes(row["predicted_fixed"])
    for loss in dict.fromkeys(rows["loss"]):
        cells = rows[rows["loss"] == loss]
        m[macro_name("toy", loss, "OutChangeUnseenMax")] = latex_number(cells["unseen_change"].max())
        m[macro_name("toy", loss, "OutChangeRejectedMin")] = latex_number(cells["rejected_change"].min())
        m[macro_name("toy", loss, "OutChangeChosenMin")] = latex_number(cells["chosen_change"].min())
        m[macro_name("toy", loss, "UnseenRowsPredictedFixedIn")] = _scenario_list(cells.loc[cells["predicted_fixed"], "scenario"])
        m[macro_name("toy", loss, "UnseenRowsFixedIn")] = _scenario_list(cells.loc[cells["unseen_fixed"], "scenario"])
    m["toyUnseenRowsAgree"] = str(int((rows["predicted_fixed"] == rows["unseen_fixed"]).sum()))
    m["toyUnseenRowsCells"] = str(len(rows))
    m["toyFixedRatio"] = latex_number(FIXED_RATIO)
    return m


def _where(numbers) -> str:
    """'in all four scenarios', 'in no scenario', 'in S2', 'in S1, S3 and S4'."""
    numbers = sorted({int(n) for n in numbers})
    if len(numbers) == len(SCENARIO_WORDS):
        return "in all four scenarios"
    if not numbers:
        return "in no scenario"
    names = [f"S{n}" for n in numbers]
    return "in " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


PROPERTY_WORDS = {  # property check column -> how the text names it
    "drastic_drop": "the drastic drop",
    "degradation": "degradation",
    "dispersion_unseen": "dispersion onto responses 9--10, which no pair contains,",
    "dispersion_outside": "dispersion onto the responses outside a prompt's own pairs",
}


def reference_argmax(settings: ToySettings) -> pd.DataFrame:
    """Per scenario, what y_gen (the reference's most likely response) is by construction of the
    step-1 target: ``tied``, how many responses share the highest probability of a prompt (more
    than one: y_gen is whichever the fitted MLP happens to rank first, an arbitrary tie-break),
    and ``is_optimal``, whether that response is the prompt's own optimal one (then y_gen = y_w)."""
    rows = []
    for scenario in SCENARIOS:
        target = initial_distribution(scenario, settings.initial)
        top = target == target.max(dim=1, keepdim=True).values
        tied = int(top.sum(dim=1).max())
        optimal = bool(all(top[i, c] for i, c in enumerate(CHOSEN_IDS)))
        rows.append({"scenario": scenario.number, "tied": tied, "is_optimal": optimal and tied == 1})
    return pd.DataFrame(rows)


def penalty_cells(table: pd.DataFrame, output_rows: pd.DataFrame, settings: ToySettings) -> pd.DataFrame:
    """Per scenario and DPPO loss: does its penalty fire (f(r) > 0 on some pair and step), and is
    every statistic of :func:`final_table` (means and sds over seeds) equal to DPO's, bit for
    bit? A penalty that never fires leaves DPO unchanged; this checks it on the runs."""
    penalized = [label for label, cfg in settings.losses.items() if cfg.kind.penalizes_gen]
    stats = [c for c in table.columns if c not in ("scenario", "loss")]
    by_cell = table.set_index(["scenario", "loss"])
    fired = output_rows.set_index(["scenario", "loss"])["f_r_positive"]
    rows = []
    for scenario in sorted(table["scenario"].unique()):
        for loss in penalized:
            if (scenario, loss) not in by_cell.index or (scenario, "dpo") not in by_cell.index:
                continue
            mine, dpo = by_cell.loc[(scenario, loss), stats], by_cell.loc[(scenario, "dpo"), stats]
            same = bool(((mine == dpo) | (mine.isna() & dpo.isna())).all())
            rows.append({"scenario": int(scenario), "loss": loss, "fires": bool(fired.get((scenario, loss), False)),
                         "equals_dpo": same})
    return pd.DataFrame(rows, columns=["scenario", "loss", "fires", "equals_dpo"])


def _penalty_macros(cells: pd.DataFrame, argmax: pd.DataFrame) -> dict[str, str]:
    """Where the DPPO penalties fire and where they equal DPO, and what y_gen is, as scenario
    lists and one sentence (``\\toyPenaltySentence``)."""
    scenarios = sorted(cells["scenario"].unique())
    fires = sorted(cells.loc[cells["fires"], "scenario"].unique())
    silent = [n for n in scenarios if n not in fires]
    equal = [n for n in scenarios if cells.loc[cells["scenario"] == n, "equals_dpo"].all()]
    silent_differs = [n for n in silent if n not in equal]  # would contradict "never fires -> DPO"
    tie = argmax[argmax["tied"] > 1]
    m = {"toyPenaltiesFireWhere": _where(fires), "toyPenaltiesSilentWhere": _where(silent),
         "toyPenaltiesEqualDpoWhere": _where(equal), "toyYgenTieWhere": _where(tie["scenario"]),
         "toyYgenOptimalWhere": _where(argmax.loc[argmax["is_optimal"], "scenario"]),
         "toyYgenTieSize": str(int(tie["tied"].max())) if len(tie) else "1"}
    sentence = (f"The DPPO penalties fire {_where(fires)} ($f(r)>0$ on some pair and step); "
                f"{_where(silent)} they never fire")
    sentence += (", and there every statistic of the penalized runs equals DPO's bit for bit" if not silent_differs
                 else f", yet the penalized runs differ from DPO {_where(silent_differs)}")
    sentence += f". $\\ygen$ is the optimal response itself {_where(argmax.loc[argmax['is_optimal'], 'scenario'])}"
    if len(tie):
        sentence += (f", and {_where(tie['scenario'])} one of {m['toyYgenTieSize']} responses that share the "
                     f"reference's highest probability, so which one is penalized is an arbitrary tie-break")
    m["toyPenaltySentence"] = sentence + "."
    return m


def _property_macros(checks: pd.DataFrame, cells: pd.DataFrame | None) -> dict[str, str]:
    """Per loss and property, where it holds (``\\toyDpoDegradationWhere`` ...), and the abstract's
    sentence on the toy model (``\\toyAbstractSentence``), built from those lists only."""
    m: dict[str, str] = {}
    where = {}
    for loss, rows in checks.groupby("loss", sort=False):
        for column in PROPERTY_WORDS:
            where[column] = _where(rows.loc[rows[column].astype(bool), "scenario"])
            m[macro_name("toy", loss, column, "Where")] = where[column]
    if where:
        sentence = ("In our rebuild of their toy model, DPO shows "
                    + "; ".join(f"{PROPERTY_WORDS[c]} {where[c]}" for c in PROPERTY_WORDS))
        if cells is not None and len(cells):
            equal = [n for n, c in cells.groupby("scenario") if c["equals_dpo"].all()]
            sentence += (f"; the DPPO penalties fire {_where(cells.loc[cells['fires'], 'scenario'])} and equal DPO "
                         f"bit for bit {_where(equal)}")
        m["toyAbstractSentence"] = sentence + "."
    return m


def latex_macros(
    table: pd.DataFrame, checks: pd.DataFrame, settings: ToySettings, output_rows: pd.DataFrame | None = None
) -> str:
    """``\\newcommand`` lines for every number the toy section quotes, so none is typed by hand:
    ``\\toyScen<One..Four><Loss><Metric>``, the property verdicts ``\\toyScen<N>Dpo<Property>``
    (yes/no), the output-row changes of ``output_rows`` (:func:`output_row_table`, when given), and the
    run settings ``\\toyNumSeeds``, ``\\toySteps`` ..."""
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
            m[prefix + suffix] = _yes(row[column])
        m[prefix + "RejectedDecades"] = f"{row['rejected_decades']:.0f}"
        m[prefix + "ChosenDecades"] = f"{row['chosen_decades']:.2f}"
        m[prefix + "UnseenRise"] = latex_number(row["unseen_rise_from_min"])
        m[prefix + "OutsideRise"] = latex_number(row["outside_rise_from_min"])
    for loss in dict.fromkeys(table["loss"]):
        rows = table[table["loss"] == loss].set_index("scenario")
        for what, column in (("Peak", "p_chosen_peak_mean"), ("Final", "p_chosen_final_mean")):
            m[macro_name("toy", loss, f"Highest{what}Scenario")] = str(int(rows[column].idxmax()))
    cells = penalty_cells(table, output_rows, settings) if output_rows is not None else None
    if output_rows is not None:
        m.update(_output_row_macros(output_rows))
        m.update(_penalty_macros(cells, reference_argmax(settings)))
    m.update(_property_macros(checks, cells))
    m["toyNumSeeds"] = str(len(settings.seeds))
    m["toySteps"] = str(settings.steps)
    m["toyLr"] = latex_number(settings.lr)
    m["toyHidden"] = str(settings.hidden)
    m["toySftSteps"] = str(settings.sft_steps)
    m["toyPairsPerPrompt"] = str(settings.pairs_per_prompt)
    for name, value in settings.initial.to_dict().items():
        m[macro_name("toyLevel", name)] = latex_number(value)
    for label, cfg in settings.losses.items():
        for field in cfg.kind.hyperparameters:
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


def latex_property_table(checks: pd.DataFrame) -> str:
    """A tabular of :func:`property_checks`: per scenario the verdict of each property with the
    numbers it rests on, dispersion in both readings (global: responses 9-10; per prompt:
    every response outside the prompt's own pairs) as initial -> lowest -> final mass."""

    def path(row: pd.Series, reading: str) -> str:
        values = (latex_number(row[f"{reading}_{k}"]) for k in ("initial", "min", "final"))
        return f"{_yes(row[f'dispersion_{reading}'])}: " + r" $\to$ ".join(values)

    lines = [
        r"\begin{tabular}{lllll}",
        r"\hline",
        r"Scen. & drastic drop & degradation & dispersion, global & dispersion, per prompt \\",
        r" & (decades: rejected vs chosen) & (fall after peak) & (mass on 9--10) & (mass outside own pairs) \\",
        r"\hline",
    ]
    for _, row in checks.iterrows():
        lines.append(
            f"S{int(row['scenario'])} & {_yes(row['drastic_drop'])}: {row['rejected_decades']:.0f} vs "
            f"{row['chosen_decades']:.2f} & {_yes(row['degradation'])}: {latex_number(row['chosen_fall_after_peak'])} & "
            f"{path(row, 'unseen')} & {path(row, 'outside')} \\\\"
        )
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_output_row_table(rows: pd.DataFrame) -> str:
    """A tabular of :func:`output_row_table` per loss: where the unseen rows are predicted fixed,
    their largest change per scenario, and the smallest change of the rejected and chosen rows."""
    scenarios = sorted(rows["scenario"].unique())
    lines = [
        r"\begin{tabular}{ll" + "c" * len(scenarios) + "cc}",
        r"\hline",
        r"Loss & zero gradient predicted & " + " & ".join(f"unseen S{n}" for n in scenarios)
        + r" & rejected & chosen \\",
        r"\hline",
    ]
    for loss in dict.fromkeys(rows["loss"]):
        cells = rows[rows["loss"] == loss].set_index("scenario")
        unseen = " & ".join(latex_number(cells.loc[n, "unseen_change"]) for n in scenarios)
        lines.append(
            f"{loss.replace('_', chr(92) + '_')} & {_scenario_list(cells.index[cells['predicted_fixed']])} & {unseen} & "
            f"{latex_number(cells['rejected_change'].min())} & {latex_number(cells['chosen_change'].min())} \\\\"
        )
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
