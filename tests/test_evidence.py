"""The paper's evidence section: a study's tables as macros, table and figure
(dppo.report.evidence), the comparison of a study with its rerun (dppo.evaluate.study), and the
committed copy the paper reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pipeline import snakemake
from test_study import EXPERIMENTS, simulated_scores

from dppo.evaluate.study import STUDY_RECORD, STUDY_TABLES, compare_studies, verdicts_of
from dppo.report import evidence, paper
from dppo.report.study import write_study
from dppo.settings import StudySettings

ROOT = Path(__file__).resolve().parents[1]
HELPS = {"dpo": 0.0, "dpo_twin": 0.0, "dpo_beta": 0.0, "unll_0.01": 0.0, "unll_0.1": 0.6, "unll_1": 0.3,
         "unll_10": -0.4}
EFFECTS = {"teach": HELPS, "correct": {**HELPS, "unll_0.1": -0.6, "unll_1": 0.0, "unll_10": 0.0}}


def simulated_study(directory: Path, seed: int = 0, pairs: dict | None = None) -> Path:
    """A study's tables from simulated scores with known effects (unll_0.1: +0.6 reward where the
    pairs teach the flaw, -0.6 where they correct it); returns its tables' directory."""
    study = StudySettings(worlds=4, designs={"teach": [0.6, 0.0], "correct": [0.0, 0.6]},
                          dose_response=("unll_0.1", "dpo_twin"), directory=str(directory), pairs=pairs or {})
    (directory / "provenance.json").parent.mkdir(parents=True, exist_ok=True)
    (directory / "provenance.json").write_text(json.dumps({"commit": "abc123", "cpu": "a CPU", "cores": 2,
                                                           "kernels": {"MKL_CBWR": "COMPATIBLE"} if seed else {},
                                                           "date": "2026-12-05 00:00 UTC"}))
    write_study(simulated_scores(EFFECTS, seed=seed), EXPERIMENTS, study, directory)
    return directory / "tables"


def test_the_sentences_say_where_each_experiment_beats_dpo(tmp_path):
    tables, record = evidence.read_study(simulated_study(tmp_path))
    m = evidence.evidence_macros(tables, record, "unll_0.1")
    unll = m["studyUnllZeroPointOneSentence"]
    assert "holds in 1 (teach (0.6, 0)" in unll and "refuted in 1 (correct (0, 0.6)" in unll, unll
    assert "inconclusive in 0 of 2 designs" in unll
    assert "holds in none, refuted in none, inconclusive in 2 of 2" in m["studyDpoTwinSentence"]
    # the controls are read where the main penalty holds: the "teach" design only
    assert m["studyControlsSentence"].startswith("Against DPO at teach (0.6, 0), where unll 0.1 gives +")
    assert "DPO (twin)" in m["studyControlsSentence"] and "correct" not in m["studyControlsSentence"]
    assert m["studyWorlds"] == "4" and m["studyCommit"] == "abc123" and m["studyKernels"] == "default kernels"
    assert m["studyRerunSentence"].startswith("No rerun")
    comparisons = tables["comparisons"].set_index(["design", "experiment"])
    assert f"{comparisons.loc[('teach', 'unll_0.1'), 'd_win_estimate']:+.3f}" in unll


def test_every_macro_the_section_uses_is_generated_and_it_types_no_finding(tmp_path):
    tables, record = evidence.read_study(simulated_study(tmp_path))
    record = {**record, "shown": ["unll", "minll", "conll", "unll_on_rejected", "unll_random_gate", "ipo", "dpo_sft"]}
    one = tables["comparisons"][tables["comparisons"]["experiment"] == "unll_0.1"]
    tables = {**tables, "comparisons": pd.concat([one.assign(experiment=name) for name in record["shown"]],
                                                 ignore_index=True)}
    defined = set(evidence.evidence_macros(tables, record, "unll"))
    section = (ROOT / "paper" / "sections" / "study.tex").read_text()
    used = {u for u in re.findall(r"\\(study[A-Za-z]+)", section)}
    assert used and used - defined == set()
    assert paper.unbacked_assertions(section) == []


def test_a_study_against_its_own_copy_agrees_and_against_a_rerun_counts_what_moved(tmp_path):
    first = evidence.read_study(simulated_study(tmp_path / "a", seed=0))[0]
    same = compare_studies(first, first)
    assert same["same_verdict"].all() and len(same) == len(verdicts_of(first))
    assert same.loc[same["low_first"].notna(), "second_inside_first"].astype(bool).all()
    second, rerun = evidence.read_study(simulated_study(tmp_path / "b", seed=1))
    check = compare_studies(first, second)
    moved = check[check["low_first"].notna()]
    expected_inside = moved["estimate_second"].between(moved["low_first"], moved["high_first"])
    assert (moved["second_inside_first"].astype(bool) == expected_inside).all()
    sentence = evidence.rerun_sentence(check, rerun, len(check))
    assert sentence.startswith("Rerun with MKL_CBWR=COMPATIBLE: ")
    assert f"{int(check['same_verdict'].sum())} of {len(check)} verdicts are the same" in sentence
    assert "not checked" not in sentence
    # verdicts the rerun lacks (an experiment added later) are left out and counted
    fewer = {**second, "aa": second["aa"].assign(design="elsewhere")}
    partial = compare_studies(first, fewer)
    assert len(partial) == len(check) - len(first["aa"])
    assert f"({len(first['aa'])} verdicts of the study are not in the rerun" in \
        evidence.rerun_sentence(partial, rerun, len(check))
    # a tuned verdict chosen among other DPO settings is another verdict: not compared
    retuned = {**second, "tuned": second["tuned"].assign(dpo_candidates="dpo/dpo_lr")}
    assert len(compare_studies(first, retuned)) == len(check) - len(first["tuned"])
    # a rerun of another study altogether is refused, not compared
    elsewhere = {name: table.assign(design="elsewhere") for name, table in second.items()}
    with pytest.raises(ValueError, match="share no verdict"):
        compare_studies(first, elsewhere)


def test_a_further_pair_is_compared_with_its_own_baseline_and_leaves_the_dpo_rows_alone(tmp_path):
    plain = evidence.read_study(simulated_study(tmp_path / "plain"))[0]
    tables, record = evidence.read_study(simulated_study(tmp_path / "pairs", pairs={"unll_1": "unll_0.1"}))
    rows = tables["comparisons"]
    assert (rows["baseline"] == "dpo").sum() == len(plain["comparisons"])
    pair = rows[rows["baseline"] == "unll_0.1"].set_index("design")
    assert list(pair["experiment"]) == ["unll_1", "unll_1"]
    # unll_1 (+0.3) against unll_0.1 (+0.6) where the pairs teach the flaw; (0 against -0.6) where they correct it
    assert pair.loc["teach", "d_win_estimate"] < 0 < pair.loc["correct", "d_win_low"]
    m = evidence.evidence_macros(tables, record, "unll_0.1")
    assert m["studyPairsSentence"].startswith("unll 1 beats unll 0.1 (win rate against SFT, difference): holds in 1 "
                                              "(correct (0, 0.6)")
    assert m["studyUnllZeroPointOneSentence"] == evidence.evidence_macros(plain, record, "unll_0.1")[
        "studyUnllZeroPointOneSentence"]
    assert (tmp_path / "pairs" / "summary.md").read_text().count("| unll 1 | unll 0.1 |") == 2


def test_the_commits_of_a_study_run_again_are_all_named():
    provenance = {"commit": "b2", "uncommitted_changes": True, "earlier": [{"commit": "a1"}]}
    assert evidence.commits_text(provenance) == "a1, then b2 (with uncommitted changes)"
    assert evidence.commits_text({}) == "not recorded"


def test_the_kernels_and_threads_of_a_study_are_named():
    assert evidence.kernels_text({"provenance": {"kernels": {}, "threads_per_job": 1}}) == \
        "default kernels, 1 thread per job"
    older = {"kernels": {"MKL_CBWR": "COMPATIBLE"}, "snakemake_args": ["--max-threads", "1", "--quiet"]}
    assert evidence.kernels_text({"provenance": older}) == "MKL_CBWR=COMPATIBLE, 1 thread per job"
    assert evidence.kernels_text({}) == "default kernels"


def test_a_missing_table_is_named(tmp_path):
    directory = simulated_study(tmp_path)
    (directory / "tuned.csv").unlink()
    with pytest.raises(FileNotFoundError, match="tuned.csv is missing"):
        evidence.read_study(directory)


def test_the_committed_evidence_is_a_whole_study_with_its_provenance():
    """evidence/study (config.yaml's paper.evidence) holds every table and the record of the
    commit and machine that produced them; its verdicts are those its intervals give."""
    directory = ROOT / "evidence" / "study"
    tables, record = evidence.read_study(directory)
    assert set(STUDY_TABLES) <= {p.stem for p in directory.glob("*.csv")} and (directory / STUDY_RECORD).is_file()
    assert record["provenance"]["commit"] and record["provenance"]["cpu"]
    assert set(tables["comparisons"]["design"]) == set(record["study"]["designs"])
    tuned = tables["tuned"]
    by_interval = np.where(tuned["d_win_low"] > 0, "holds", np.where(tuned["d_win_high"] < 0, "refuted", "inconclusive"))
    assert (tuned["verdict"] == by_interval).all()


@pytest.mark.slow
def test_the_rule_writes_the_section_from_the_committed_tables(tmp_path):
    """The route the pipeline takes: Snakemake's study_evidence rule on config.yaml, its inputs
    in the repository whatever --directory is."""
    target = "paper/tables/study_macros.tex"
    snakemake(tmp_path, "--cores", "1", target)
    macros = (tmp_path / target).read_text()
    assert macros.startswith("% Generated from evidence/study") and r"\newcommand{\studyUnllSentence}" in macros
    drawn = pd.read_csv(tmp_path / "paper" / "figures" / "dose_response.csv")
    assert drawn.groupby("experiment")["label"].nunique().eq(1).all() and drawn["label"].nunique() == drawn[
        "experiment"].nunique()  # one distinct label per line
    assert (drawn[["n_worlds", "n_prompts"]] > 0).all().all()
    assert r"\label{tab:study}" in (tmp_path / "paper" / "tables" / "study.tex").read_text()
