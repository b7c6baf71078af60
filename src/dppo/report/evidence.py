"""The paper's evidence section: a study's tables (``make study`` writes them under its directory;
``evidence/`` holds the copy the paper reads, with the commit and machine that produced it) as
LaTeX macros, a table and the dose-response figure. ``make run`` does not recompute the study:
every sentence here is generated from the copied tables, so the text cannot state more than they
hold.

A second copy of the same study rerun with other float kernels (``paper.evidence_rerun``) adds
the verdict-by-verdict comparison of the two (:func:`dppo.evaluate.study.compare_studies`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dppo.evaluate.replicates import HOLDS, INCONCLUSIVE, REFUTED, verdict
from dppo.evaluate.study import BASELINE, STUDY_RECORD, STUDY_TABLES, against, compare_studies, verdicts_of
from dppo.report.latex import booktabs_table, fmt_percent, latex_escape, macro_name, render_macros
from dppo.report.study import design_order, dose_response_figure
from dppo.runtime.io import write_text
from dppo.settings import StudySettings


def read_study(directory: str | Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """A study's tables (``comparisons, aa, alpha, tuned``) and its record (settings, labels,
    the experiments its figure shows, provenance), naming the file that is missing."""
    directory = Path(directory)
    paths = [directory / f"{name}.csv" for name in STUDY_TABLES] + [directory / STUDY_RECORD]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the study's tables are incomplete: {missing[0]} is missing (copy the tables of "
                                "`make study` there: README, 'Evidence')")
    tables = {name: pd.read_csv(directory / f"{name}.csv") for name in STUDY_TABLES}
    return tables, json.loads((directory / STUDY_RECORD).read_text())


def _interval(row: Mapping, prefix: str = "d_win_") -> str:
    return f"{row[prefix + 'estimate']:+.3f} [{row[prefix + 'low']:+.3f}, {row[prefix + 'high']:+.3f}]"


def design_names(record: Mapping) -> dict[str, str]:
    """Each design's name as the text prints it: 'pairs teach it (0.6, 0)'."""
    return {name: f"{name.replace('_', ' ')} ({rates[0]:g}, {rates[1]:g})"
            for name, rates in record["study"]["designs"].items()}


def _design_order(record: Mapping) -> list[str]:
    return design_order(StudySettings.from_dict(record["study"]))


def _verdict(row: Mapping) -> str:
    """"A beats B" on a comparisons row's win-rate difference (:func:`dppo.evaluate.replicates.verdict`)."""
    return verdict({"low": row["d_win_low"], "high": row["d_win_high"]}, "greater")


def experiment_sentence(comparisons: pd.DataFrame, name: str, record: Mapping, baseline: str = BASELINE) -> str:
    """Where one experiment beats ``baseline`` (DPO, or the other side of a ``study.pairs``
    entry): the designs where its win-rate difference holds, is refuted and is inconclusive,
    with the intervals of the first two."""
    designs, labels = design_names(record), record["labels"]
    label, other = labels.get(name, name), labels.get(baseline, baseline)
    rows = against(comparisons, baseline).query("experiment == @name").set_index("design")
    order = [d for d in _design_order(record) if d in rows.index]
    verdicts = {d: _verdict(rows.loc[d]) for d in order}
    parts = []
    for outcome in (HOLDS, REFUTED):
        where = [d for d in order if verdicts[d] == outcome]
        if where:
            listed = "; ".join(f"{designs[d]}: {_interval(rows.loc[d])}" for d in where)
            parts.append(f"{outcome} in {len(where)} ({listed})")
        else:
            parts.append(f"{outcome} in none")
    n_open = sum(v == INCONCLUSIVE for v in verdicts.values())
    return (f"{label} beats {other} (win rate against SFT, difference): {parts[0]}, {parts[1]}, inconclusive in "
            f"{n_open} of {len(order)} designs.")


def controls_sentence(comparisons: pd.DataFrame, main: str, record: Mapping) -> str:
    """At the designs where ``main`` beats DPO, what every other shown experiment gives there:
    whether a control without y_gen's trigger, or without y_gen at all, does as well."""
    designs, labels = design_names(record), record["labels"]
    rows = against(comparisons).set_index(["design", "experiment"])
    where = [d for d in _design_order(record) if (d, main) in rows.index and _verdict(rows.loc[(d, main)]) == HOLDS]
    if not where:
        return f"{labels.get(main, main)} beats DPO in no design, so no control has a gain to match."
    others = [n for n in record["shown"] if n != main]
    parts = []
    for design in where:
        listed = ", ".join(f"{labels.get(n, n)} {_interval(rows.loc[(design, n)])}" for n in others
                           if (design, n) in rows.index)
        parts.append(f"at {designs[design]}, where {labels.get(main, main)} gives {_interval(rows.loc[(design, main)])}: "
                     f"{listed}")
    return "Against DPO " + "; ".join(parts) + "."


def aa_sentence(aa: pd.DataFrame, level: float) -> str:
    n, false = len(aa), int(aa["excludes_zero"].sum())
    return (f"DPO against its twin (the same settings, other seeds), the A/A check: {false} of {n} intervals exclude "
            f"zero (expected {100 * (1 - level):g}% of them).")


def tuned_sentence(tuned: pd.DataFrame) -> str:
    counts = tuned["verdict"].value_counts()
    held = tuned[tuned["verdict"] == HOLDS]
    which = "; ".join(f"{r['loss']} at {r['design'].replace('_', ' ')}: {_interval(r)}" for _, r in held.iterrows())
    return (f"Each penalty at its best alpha against DPO at its best beta (both chosen on validation prompts, judged on "
            f"the test prompts) beats DPO in {counts.get(HOLDS, 0)} of {len(tuned)} (design, penalty) cells"
            + (f" ({which})" if which else "") + f", is refuted in {counts.get(REFUTED, 0)} and inconclusive in "
            f"{counts.get(INCONCLUSIVE, 0)}.")


def alpha_sentence(alpha: pd.DataFrame) -> str:
    trend, interior = alpha["trend_verdict"].value_counts(), alpha["interior_verdict"].value_counts()
    return (f"That alpha matters (a slope or curvature over log alpha, calibrated) holds in {trend.get(HOLDS, 0)} of "
            f"{len(alpha)} (design, penalty) cells; that an interior alpha beats both ends (the poster's balance, chosen "
            f"on validation prompts) holds in {interior.get(HOLDS, 0)}, is refuted in {interior.get(REFUTED, 0)} and "
            f"inconclusive in {interior.get(INCONCLUSIVE, 0)}.")


def commits_text(provenance: Mapping) -> str:
    """The commits a study's runs came from, oldest first ('f9366ae, then 4573e3f (with
    uncommitted changes)'): a study run again in its directory keeps its earlier runs."""
    records = [*provenance.get("earlier", []), provenance] if provenance else []
    names = [r.get("commit", "not recorded") + (" (with uncommitted changes)" if r.get("uncommitted_changes") else "")
             for r in records]
    return ", then ".join(dict.fromkeys(names)) or "not recorded"


def kernels_text(record: Mapping) -> str:
    """The float-kernel switches a study ran with ("default kernels" when none was set) and its
    threads per job, where recorded (the driver's own record, or an older run's ``--max-threads``)."""
    provenance = record.get("provenance") or {}
    switches = [f"{k}={v}" for k, v in sorted((provenance.get("kernels") or {}).items())] or ["default kernels"]
    args = provenance.get("snakemake_args") or []
    threads = args[args.index("--max-threads") + 1] if "--max-threads" in args[:-1] else \
        provenance.get("threads_per_job")
    if threads is not None:
        switches.append(f"{threads} thread{'' if str(threads) == '1' else 's'} per job")
    return ", ".join(switches)


def rerun_sentence(check: pd.DataFrame, rerun: Mapping, n_verdicts: int) -> str:
    """How the study's verdicts fared when it was rerun with other float kernels (``check``:
    :func:`dppo.evaluate.study.compare_studies`; ``n_verdicts``: how many the study holds)."""
    with_interval = check[check["low_first"].notna()]
    inside = int(with_interval["second_inside_first"].astype(bool).sum())
    unchecked = n_verdicts - len(check)
    return (f"Rerun with {kernels_text(rerun)}: {int(check['same_verdict'].sum())} of {len(check)} verdicts are the "
            f"same, and {inside} of the {len(with_interval)} rerun estimates that have an interval lie inside the first "
            f"run's interval" + (f" ({unchecked} verdicts of the study are not in the rerun: designs or experiments "
                                 "it did not run, or a choice among other settings)" if unchecked else "") + ".")


def evidence_macros(tables: Mapping[str, pd.DataFrame], record: Mapping, main: str,
                    rerun: tuple[Mapping[str, pd.DataFrame], Mapping] | None = None) -> dict[str, str]:
    """The section's macros: the study's size and provenance, one sentence per experiment the
    figure shows (``study<Name>Sentence``), the controls at the designs where ``main`` holds, the
    A/A, tuned and alpha results, and the rerun with other kernels when given."""
    comparisons, study = tables["comparisons"], record["study"]
    first = comparisons.iloc[0]
    provenance = record.get("provenance") or {}
    m = {"studyWorlds": str(int(first["n_worlds"])), "studySeeds": str(int(first["n_seeds"])),
         "studyPrompts": str(int(first["n_prompts"])), "studyDesignCount": str(len(study["designs"])),
         "studyLevel": fmt_percent(study["level"], 0), "studyDf": str(int(first["d_win_df"])),
         "studyCommit": latex_escape(commits_text(provenance)),
         "studyCpu": latex_escape(f"{provenance.get('cpu', 'not recorded')}, {provenance.get('cores', '?')} cores"),
         "studyKernels": latex_escape(kernels_text(record)),
         "studyDate": latex_escape(provenance.get("date", "not recorded")),
         "studyAASentence": latex_escape(aa_sentence(tables["aa"], study["level"])),
         "studyTunedSentence": latex_escape(tuned_sentence(tables["tuned"])),
         "studyAlphaSentence": latex_escape(alpha_sentence(tables["alpha"])),
         "studyControlsSentence": latex_escape(controls_sentence(comparisons, main, record)),
         "studyMainLabel": latex_escape(record["labels"].get(main, main))}
    for name in record["shown"]:
        m[macro_name("study", name, "Sentence")] = latex_escape(experiment_sentence(comparisons, name, record))
    pairs = (record["study"].get("pairs") or {}).items()
    m["studyPairsSentence"] = latex_escape(" ".join(experiment_sentence(comparisons, a, record, b) for a, b in pairs)
                                           or "No further comparison is recorded.")
    m["studyRerunSentence"] = (latex_escape(rerun_sentence(compare_studies(tables, rerun[0]), rerun[1],
                                                           len(verdicts_of(tables)))) if rerun
                               else "No rerun with other float kernels is recorded.")
    return m


def evidence_table_latex(comparisons: pd.DataFrame, record: Mapping) -> str:
    """The dose-response as a table: per design, each shown experiment's win-rate difference from
    DPO with its interval over worlds."""
    shown, labels = record["shown"], record["labels"]
    designs = design_names(record)
    rows = against(comparisons).set_index(["design", "experiment"])
    body = []
    for design in _design_order(record):
        cells = [latex_escape(_interval(rows.loc[(design, n)])) if (design, n) in rows.index else "--" for n in shown]
        body.append([latex_escape(designs[design]), *cells])
    first = comparisons.iloc[0]
    header = " & ".join(["design", *(latex_escape(labels.get(n, n)) for n in shown)])
    caption = (f"Win rate against SFT minus DPO's, at each design (share of chosen, share of rejected answers with "
               f"y\\_gen's flaw); {fmt_percent(record['study']['level'], 0)} intervals over "
               f"{int(first['n_worlds'])} worlds ({int(first['n_seeds'])} seed each, {int(first['n_prompts'])} "
               "held-out prompts per world).")
    return booktabs_table("l" + "c" * len(shown), header, body, caption, "tab:study", env="table*")


def write_evidence(directories: Mapping[str, str], main: str, outputs: Mapping[str, str], source: str) -> None:
    """The section's files from the study at ``directories["evidence"]`` (and its rerun at
    ``directories["evidence_rerun"]``, if any; ``source`` names the first as the config does):
    ``outputs`` names the macros, the table and the figure's PDF, PNG and CSV."""
    tables, record = read_study(directories["evidence"])
    rerun = read_study(directories["evidence_rerun"]) if directories.get("evidence_rerun") else None
    if main not in record["shown"]:
        raise ValueError(f"claims.dppo ({main!r}) is not among the study's dose-response experiments "
                         f"{record['shown']} ({directories['evidence']}/{STUDY_RECORD})")
    write_text(outputs["macros"], render_macros(evidence_macros(tables, record, main, rerun),
                                                header=f"Generated from {source}: do not edit."))
    write_text(outputs["table"], evidence_table_latex(tables["comparisons"], record))
    stem = Path(outputs["pdf"]).with_suffix("")
    dose_response_figure(tables["comparisons"], StudySettings.from_dict(record["study"]), record["shown"],
                         record["labels"], stem)
