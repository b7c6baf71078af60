"""The study's tables, figure and summary (dppo.study runs it; dppo.evaluate.study computes it).

Written under the study's directory: ``tables/comparisons.csv`` (every experiment against DPO in
every design: the difference of win rates against SFT, of negative-reward shares, and the direct
comparison of the two answers, each over worlds, with MDE and variance shares),
``tables/aa.csv`` (the A/A checks), ``tables/alpha.csv`` (per design and penalty: does alpha
matter, does an interior alpha beat both ends), ``tables/tuned.csv`` (each penalty at its best
alpha against DPO at its best beta, chosen on validation prompts, judged on test prompts),
``figures/dose_response.{pdf,png}`` and ``summary.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dppo.evaluate.study import (  # noqa: E402
    BASELINE,
    STUDY_RECORD,
    aa_checks,
    against,
    alpha_tests,
    balance_prompts,
    compare_with_baseline,
    tuned_comparison,
)
from dppo.report.latex import fmt_float  # noqa: E402
from dppo.report.result_files import write_csv  # noqa: E402
from dppo.runtime.io import save_figure, write_text  # noqa: E402
from dppo.settings import PENALTY_SWEEP_GROUPS, StudySettings, penalized_losses  # noqa: E402


def alpha_curves(experiments: list[dict]) -> dict[str, dict[float, str]]:
    """Per penalized loss: alpha -> experiment, over the runs of its alpha sweep at the claims'
    weighting (linear) and the default unlikelihood form."""
    curves: dict[str, dict[float, str]] = {}
    for e in experiments:
        if e["loss"] in penalized_losses() and e.get("group") in PENALTY_SWEEP_GROUPS and e.get("f") == "linear":
            curves.setdefault(e["loss"], {})[float(e["alpha"])] = e["name"]
    return {loss: dict(sorted(curve.items())) for loss, curve in curves.items() if len(curve) >= 4}


def distinct_labels(labels: dict[str, str]) -> dict[str, str]:
    """Each experiment's label, with its name added where two experiments share one."""
    seen = pd.Series(labels).value_counts()
    return {name: label if seen[label] == 1 else f"{label} [{name}]" for name, label in labels.items()}


def _interval(row: pd.Series, prefix: str) -> str:
    return (f"{row[prefix + 'estimate']:+.3f} [{row[prefix + 'low']:+.3f}, {row[prefix + 'high']:+.3f}] "
            f"(MDE {row[prefix + 'mde']:.3f})")


PANELS = (("d_win_", "win rate vs SFT minus DPO's"), ("net_direct_", "A beats DPO minus DPO beats A"))


def design_order(study: StudySettings) -> list[str]:
    """The designs from "the pairs correct y_gen's flaw" to "the pairs teach it" (the share of
    chosen minus the share of rejected answers that carry it)."""
    return sorted(study.designs, key=lambda name: study.designs[name][0] - study.designs[name][1])


def dose_response_data(comparisons: pd.DataFrame, study: StudySettings, shown: list[str],
                       labels: dict[str, str]) -> pd.DataFrame:
    """What the dose-response figure draws, one row per (panel, experiment, design): the design's
    position and flaw shares, the experiment's label, the estimate and interval over worlds, and
    the counts behind them."""
    position = {name: k for k, name in enumerate(design_order(study))}
    rows = []
    for prefix, ylabel in PANELS:
        for name in shown:
            for _, r in against(comparisons).query("experiment == @name").iterrows():
                chosen, rejected = study.designs[r["design"]]
                rows.append({"panel": ylabel, "experiment": name, "label": labels.get(name, name),
                             "design": r["design"], "x": position[r["design"]], "chosen_flawed": chosen,
                             "rejected_flawed": rejected, "estimate": r[prefix + "estimate"], "low": r[prefix + "low"],
                             "high": r[prefix + "high"], "n_worlds": int(r["n_worlds"]),
                             "n_seeds": int(r["n_seeds"]), "n_prompts": int(r["n_prompts"])})
    return pd.DataFrame(rows).sort_values(["panel", "experiment", "x"], kind="stable", ignore_index=True)


def dose_response_figure(comparisons: pd.DataFrame, study: StudySettings, shown: list[str], labels: dict[str, str],
                         path_stem: Path) -> pd.DataFrame:
    """Gain over DPO at each design (:func:`design_order`), one line per experiment, replicated
    95% intervals; returns what it draws (:func:`dose_response_data`), also written as
    ``<path_stem>.csv``. The designs are categories on the x axis, so drawing the lines side by
    side moves no value."""
    order = design_order(study)
    data = dose_response_data(comparisons, study, shown, labels)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0), sharex=True)
    for ax, (prefix, ylabel) in zip(axes, PANELS):
        for k, name in enumerate(shown):
            rows = data[(data["panel"] == ylabel) & (data["experiment"] == name)]
            offset = (k - (len(shown) - 1) / 2) * 0.6 / max(1, len(shown))
            ax.errorbar(rows["x"] + offset, rows["estimate"],
                        yerr=[rows["estimate"] - rows["low"], rows["high"] - rows["estimate"]],
                        marker="o", ms=3, capsize=2, lw=1, label=labels.get(name, name))
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{name}\n({study.designs[name][0]:g}, {study.designs[name][1]:g})" for name in order],
                           fontsize=7)
        ax.set_ylabel(ylabel)
    fig.supxlabel("design (share of chosen, share of rejected answers with y_gen's flaw)", fontsize=9)
    n = comparisons.iloc[0]
    fig.suptitle(f"{int(n['n_worlds'])} worlds x {int(n['n_seeds'])} seed(s) x {int(n['n_prompts'])} prompts per "
                 f"design; {100 * study.level:g}% intervals over worlds", fontsize=9)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, path_stem.with_suffix(".pdf"), path_stem.with_suffix(".png"))
    write_csv(data, path_stem.with_suffix(".csv"))
    return data


def write_study(table: pd.DataFrame, experiments: list[dict], study: StudySettings, directory: Path) -> None:
    table = balance_prompts(table)
    names = [e["name"] for e in experiments]
    labels = {e["name"]: e.get("label") or e["name"] for e in experiments}
    designs = list(study.designs)
    missing = sorted({n for pair in study.pairs.items() for n in pair} - set(names))
    if missing:
        raise ValueError(f"study.pairs names {missing[0]!r}, which is not an experiment of the study's runs")
    comparisons = pd.concat([compare_with_baseline(table, d, names, study.level) for d in designs]
                            + [compare_with_baseline(table, d, [a], study.level, baseline=b)
                               for d in designs for a, b in study.pairs.items()], ignore_index=True)
    aa = aa_checks(table, designs, [(BASELINE, study.twin)], study.level)
    curves = alpha_curves(experiments)
    alpha = pd.DataFrame([{"loss": loss, **alpha_tests(table, d, curve, study.level, study.split_seed)}
                          for d in designs for loss, curve in curves.items()])
    dpo_runs = [e["name"] for e in experiments if e["loss"] == "dpo" and e.get("group") in study.dpo_groups]
    tuned = pd.DataFrame([{"loss": loss, **tuned_comparison(table, d, list(curve.values()), dpo_runs, study.level,
                                                            study.split_seed)}
                          for d in designs for loss, curve in curves.items()])
    for name, frame in (("comparisons", comparisons), ("aa", aa), ("alpha", alpha), ("tuned", tuned)):
        write_csv(frame, directory / "tables" / f"{name}.csv")
    shown = [n for n in study.dose_response if n in names]
    labels = distinct_labels(labels)
    dose_response_figure(comparisons, study, shown, labels, directory / "figures" / "dose_response")
    write_text(directory / "summary.md", summary(comparisons, aa, alpha, tuned, study, shown, labels))
    provenance = directory / "provenance.json"
    about = {"study": study.to_dict(), "shown": shown, "labels": labels,
             "provenance": json.loads(provenance.read_text()) if provenance.exists() else None}
    write_text(directory / "tables" / STUDY_RECORD, json.dumps(about, indent=1) + "\n")


def summary(comparisons, aa, alpha, tuned, study: StudySettings, shown, labels) -> str:
    first = comparisons.iloc[0]
    lines = [
        "# Study: the embedded task over replicated pipelines and designs",
        "",
        f"{int(first['n_worlds'])} worlds (each its own data draw, SFT model, y_gen, reference log-probs and training "
        f"seeds) x {int(first['n_seeds'])} seed(s) x {int(first['n_prompts'])} held-out prompts per design; "
        f"{100 * study.level:g}% intervals over worlds (Student's t, {int(first['d_win_df'])} df), conditional on "
        f"{first['d_win_conditional_on'] or 'nothing'}. Design: (share of chosen, share of rejected answers with "
        "y_gen's flaw).",
        "",
        "## Gain over DPO (win rate against SFT, difference) and direct comparison with DPO",
        "",
        "| design | experiment | d win rate vs DPO | A beats DPO - DPO beats A | ties |",
        "| --- | --- | --- | --- | --- |",
    ]
    vs_dpo = against(comparisons)
    for _, row in vs_dpo[vs_dpo["experiment"].isin(shown)].iterrows():
        chosen, rejected = study.designs[row["design"]]
        lines.append(f"| {row['design']} ({fmt_float(chosen, 2)}, {fmt_float(rejected, 2)}) | "
                     f"{labels.get(row['experiment'], row['experiment'])} | {_interval(row, 'd_win_')} | "
                     f"{_interval(row, 'net_direct_')} | {row['ties']:.2f} |")
    if study.pairs:
        lines += ["", "## Further comparisons (study.pairs)", "", "| design | A | B | d win rate (A - B) | "
                  "A beats B - B beats A | ties |", "| --- | --- | --- | --- | --- | --- |"]
        for a, b in study.pairs.items():
            for _, row in against(comparisons, b).query("experiment == @a").iterrows():
                lines.append(f"| {row['design']} | {labels.get(a, a)} | {labels.get(b, b)} | {_interval(row, 'd_win_')} | "
                             f"{_interval(row, 'net_direct_')} | {row['ties']:.2f} |")
    lines += ["", "## A/A: DPO against its twin (other seeds)", ""]
    lines += [f"- {row['design']}: {_interval(row, 'd_win_')}, excludes 0: {row['excludes_zero']}"
              for _, row in aa.iterrows()]
    rate = aa["excludes_zero"].mean()
    lines += [f"- false-positive rate: {int(aa['excludes_zero'].sum())} of {len(aa)} ({rate:.2f}; expected "
              f"{1 - study.level:.2f})", ""]
    if len(alpha):
        lines += ["## Alpha", "", "| design | loss | alpha matters (slope, curvature) | interior alpha beats both ends "
                  "(chosen on validation prompts) |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['design']} | {r['loss']} | {r['trend_verdict']} | {r['interior_verdict']} "
                  f"(alpha {r['interior_chosen_alpha']:g}) |" for _, r in alpha.iterrows()]
        lines += ["", "## Each penalty at its best alpha against DPO at its best beta (test prompts)", ""]
        lines += [f"- {r['design']}, {r['loss']} ({r['chosen']} vs {r['chosen_dpo']}): {_interval(r, 'd_win_')}: "
                  f"{r['verdict']}" for _, r in tuned.iterrows()]
    return "\n".join(lines) + "\n"
