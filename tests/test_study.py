"""The study: worlds (the whole pipeline replicated), the experiment filter, the controls of
what y_gen adds, and the study's tables and figure from per-prompt scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dppo.config import ConfigError, load_settings, load_yaml, merged_config
from dppo.report.study import alpha_curves, write_study
from dppo.settings import WORLD_SEED_STRIDE, LossSettings, StudySettings
from dppo.study import world_overlay
from dppo.train.losses import Trigger
from dppo.train.rows import with_penalized_response

ROOT = Path(__file__).resolve().parents[1]


def study_settings():
    return load_settings(merged_config([load_yaml(ROOT / "config.yaml"), load_yaml(ROOT / "configs" / "overlays" / "study.yaml")]))


def test_world_zero_is_the_config_and_world_k_shifts_every_seed():
    config = load_yaml(ROOT / "config.yaml")
    plain, zero = load_settings(config), load_settings({**config, "world": 0})
    assert plain == zero and plain.world == 0
    two = load_settings({**config, "world": 2})
    shift = 2 * WORLD_SEED_STRIDE
    assert two.synthetic.seed == plain.synthetic.seed + shift
    assert two.tiny_model.seed == plain.tiny_model.seed + shift
    assert two.sft.seed == plain.sft.seed + shift
    assert two.data.subset_seed == plain.data.subset_seed + shift
    for name, experiment in plain.experiments.items():
        assert two.experiments[name].seeds == tuple(s + shift for s in experiment.seeds)
    assert two.toy == plain.toy  # the toy is its own study
    with pytest.raises(ConfigError, match="config key world"):
        load_settings({**config, "world": -1})


def test_only_experiments_keeps_names_and_sweeps_and_refuses_what_it_cannot_keep():
    config = load_yaml(ROOT / "config.yaml")
    kept = load_settings({**config, "only_experiments": ["dpo", "alpha"], "claims": {"dppo": None}}).experiments
    assert list(kept) == ["dpo", *[n for n in load_settings(config).experiments if n.startswith("alpha__")]]
    with pytest.raises(ConfigError, match="only_experiments: 'nope' names no experiment"):
        load_settings({**config, "only_experiments": ["dpo", "nope"]})
    with pytest.raises(ConfigError, match="'unll_then_dpo' starts from 'unll', which is not kept"):
        load_settings({**config, "only_experiments": ["dpo", "unll_then_dpo"]})


def test_merged_config_merges_as_snakemake_does():
    from snakemake.utils import update_config

    base = load_yaml(ROOT / "config.yaml")
    overlay = load_yaml(ROOT / "configs" / "overlays" / "study.yaml")
    expected = {}
    for config in (base, overlay):
        update_config(expected, config)
    assert merged_config([base, overlay]) == expected


def test_the_study_config_runs_its_grid_one_seed_each_with_the_controls():
    settings = study_settings()
    study = settings.study
    assert len(study.designs) >= 5 and study.worlds >= 3
    assert all(len(e.seeds) == 1 for e in settings.experiments.values())
    assert settings.experiments[study.twin].loss.name == "dpo"
    assert settings.experiments["unll_on_rejected"].loss.gen_source == "rejected"
    assert settings.experiments["unll_random_gate"].loss.gate == "random"
    curves = alpha_curves([{"name": n, **e.to_dict()} for n, e in settings.experiments.items()])
    assert sorted(curves) == ["conll", "minll", "unll"] and all(len(c) >= 4 for c in curves.values())
    assert set(study.dose_response) <= set(settings.experiments)
    chosen, rejected = study.designs["neutral"]
    assert world_overlay(study, "neutral", 2) == {
        "world": 2, "synthetic": {"chosen_flaw_rate": chosen, "rejected_flaw_rate": rejected}}


@pytest.mark.parametrize("values, match", [
    ({"designs": {}}, "designs"),
    ({"designs": {"x": [0.1]}}, "designs.x"),
    ({"designs": {"x": [0.1, 1.5]}}, "designs.x"),
    ({"worlds": 0}, "worlds"),
])
def test_bad_study_settings_name_the_key(values, match):
    with pytest.raises(ConfigError, match=f"config key study.{match}"):
        StudySettings.from_dict(values, "study")


def test_the_controls_apply_to_the_penalties_only():
    LossSettings(name="unll", gate="random")
    with pytest.raises(ValueError, match="gen_source"):
        LossSettings(name="dpo", gen_source="rejected")
    with pytest.raises(ValueError, match="gate"):
        LossSettings(name="ipo", gate="random")


def test_the_rejected_answer_control_penalizes_y_l_with_its_reference_log_prob():
    rows = pd.DataFrame({"rejected_ids": [[1, 2], [3]], "rejected": ["a b", "c"], "gen_ids": [[4], [5, 6]],
                         "gen": ["d", "e f"], "ref_rejected": [-3.0, -1.0], "ref_gen": [-2.0, -4.0]})
    assert with_penalized_response(rows, "ygen") is rows
    swapped = with_penalized_response(rows, "rejected")
    assert swapped["gen_ids"].tolist() == [[1, 2], [3]] and swapped["gen"].tolist() == ["a b", "c"]
    assert swapped["ref_gen"].tolist() == [-3.0, -1.0] and rows["ref_gen"].tolist() == [-2.0, -4.0]


def test_the_random_gate_fires_as_often_and_as_strongly_on_other_rows():
    f_r = torch.tensor([0.0, 0.0, 1.5, 0.0, 0.2, 0.0, 0.0, 3.0])
    trig = Trigger(r=-f_r, f_r=f_r)
    shuffled = trig.shuffled(7)
    assert torch.equal(shuffled.r, trig.r)
    assert sorted(shuffled.f_r.tolist()) == sorted(f_r.tolist())  # the same weights
    assert not torch.equal(shuffled.f_r, f_r)  # on other rows
    assert torch.equal(trig.shuffled(7).f_r, shuffled.f_r)  # a batch's gate is reproducible (resume)


def simulated_scores(effects: dict, n_worlds=4, n_prompts=60, seed=0):
    """Per-prompt scores of a study: per (design, experiment) a true shift of the reward, a world
    effect shared by the experiments of a world, a prompt effect, noise; wins against an SFT
    reward of 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for design, shifts in effects.items():
        for world in range(n_worlds):
            world_effect = rng.normal(0, 0.3)
            prompt_effect = rng.normal(0, 0.5, n_prompts)
            for name, shift in shifts.items():
                reward = shift + world_effect + prompt_effect + rng.normal(0, 0.5, n_prompts)
                reward = np.round(reward, 1)  # ties happen, as with the task's graded reward
                rows.append(pd.DataFrame({
                    "design": design, "world": world, "experiment": name, "seed": 1000 * world,
                    "prompt_id": np.arange(n_prompts), "reward": reward,
                    "win": (reward > 0) + 0.5 * (reward == 0), "negative": (reward < 0).astype(float),
                    "same_as_reference": (reward == 0).astype(float)}))  # a tie: SFT's own answer
    return pd.concat(rows, ignore_index=True)


EXPERIMENTS = [
    {"name": "dpo", "loss": "dpo", "group": "main", "label": "DPO"},
    {"name": "dpo_twin", "loss": "dpo", "group": "aa_twin", "label": "DPO (twin)"},
    {"name": "dpo_beta", "loss": "dpo", "group": "dpo_tuning", "label": "DPO beta"},
    *[{"name": f"unll_{a:g}", "loss": "unll", "f": "linear", "alpha": a, "group": "main" if a == 0.1 else "alpha_sweep",
       "label": f"unll {a:g}"} for a in (0.01, 0.1, 1.0, 10.0)],
]


def test_the_study_tables_and_figure_from_per_prompt_scores(tmp_path):
    helps = {"dpo": 0.0, "dpo_twin": 0.0, "dpo_beta": 0.0, "unll_0.01": 0.0, "unll_0.1": 0.6, "unll_1": 0.3,
             "unll_10": -0.4}
    effects = {"teach": helps, "correct": {**helps, "unll_0.1": 0.0, "unll_1": 0.0, "unll_10": 0.0}}
    table = simulated_scores(effects)
    study = StudySettings(worlds=4, designs={"teach": [0.6, 0.0], "correct": [0.0, 0.6]},
                          dose_response=("unll_0.1", "dpo_twin"), directory=str(tmp_path))
    write_study(table, EXPERIMENTS, study, tmp_path)
    comparisons = pd.read_csv(tmp_path / "tables" / "comparisons.csv")
    gain = comparisons.set_index(["design", "experiment"])
    assert gain.loc[("teach", "unll_0.1"), "d_win_low"] > 0  # a clear gain is found
    assert gain.loc[("correct", "unll_0.1"), "d_win_low"] < 0 < gain.loc[("correct", "unll_0.1"), "d_win_high"]
    assert (comparisons["d_win_over"] == "world").all() and (comparisons["d_win_df"] == 3).all()
    assert comparisons["d_win_conditional_on"].eq("machine").all()
    for column in ("a_wins", "ties", "b_wins"):
        assert comparisons[column].between(0, 1).all()
    assert np.allclose(comparisons[["a_wins", "ties", "b_wins"]].sum(axis=1), 1)
    same = table.groupby(["design", "experiment"])["same_as_reference"].mean()
    assert np.allclose(gain["a_same_as_sft"], same.loc[gain.index])
    assert np.allclose(gain["b_same_as_sft"], same.loc[[(d, "dpo") for d, _ in gain.index]])
    aa = pd.read_csv(tmp_path / "tables" / "aa.csv")
    assert list(aa["design"]) == ["teach", "correct"] and not aa["excludes_zero"].any()
    alpha = pd.read_csv(tmp_path / "tables" / "alpha.csv")
    assert alpha.set_index("design").loc["teach", "trend_verdict"] == "holds"
    tuned = pd.read_csv(tmp_path / "tables" / "tuned.csv").set_index("design")
    assert tuned.loc["teach", "chosen"] in {"unll_0.1", "unll_1"}
    assert (tmp_path / "figures" / "dose_response.pdf").stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "4 worlds" in summary and "60 held-out prompts" in summary and "false-positive rate: 0 of 2" in summary


TINY_STUDY = """
study:
  worlds: 2
  designs: {teach: [0.6, 0.0], correct: [0.0, 0.6]}
  dose_response: [unll, unll_on_rejected, unll_random_gate, dpo_twin]
  directory: DIRECTORY
only_experiments: [dpo, dpo_twin, unll, alpha, unll_on_rejected, unll_random_gate]
experiments:
  dpo: {seeds: [0]}
  dpo_twin: {loss: dpo, group: aa_twin, label: DPO (twin), seeds: [500]}
  unll: {seeds: [0]}
  alpha: {loss: unll, group: alpha_sweep, sweep: {alpha: [0.01, 1.0, 10.0]}}
  unll_on_rejected: {loss: unll, gen_source: rejected, group: controls}
  unll_random_gate: {loss: unll, gate: random, group: controls}
claims: {dppo: unll, small_subset: null, chained: null}
"""


@pytest.mark.long
def test_a_tiny_study_runs_every_world_through_snakemake_and_writes_its_evidence(tmp_path):
    import subprocess
    import sys

    overlay = tmp_path / "tiny_study.yaml"
    overlay.write_text(TINY_STUDY.replace("DIRECTORY", str(tmp_path / "study")))
    done = subprocess.run([sys.executable, "-m", "dppo.study", "--configfile", str(ROOT / "configs" / "tiny.yaml"),
                           str(overlay), "--cores", "2", "--", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    study = tmp_path / "study"
    for design in ("teach", "correct"):
        for world in (0, 1):
            run = study / design / f"world-{world}"
            assert (run / "results" / "tables" / "prompt_scores.parquet").is_file()
    # each world drew its own data: the worlds' held-out prompts differ
    prompts = [pd.read_parquet(study / "teach" / f"world-{w}" / "results" / "data" / "pref" / "test.parquet")["prompt"]
               for w in (0, 1)]
    assert set(prompts[0]) != set(prompts[1])
    comparisons = pd.read_csv(study / "tables" / "comparisons.csv")
    assert set(comparisons["design"]) == {"teach", "correct"} and (comparisons["n_worlds"] == 2).all()
    assert {"unll_on_rejected", "unll_random_gate", "dpo_twin"} <= set(comparisons["experiment"])
    assert len(pd.read_csv(study / "tables" / "alpha.csv")) == 2  # one unll curve per design
    assert (study / "figures" / "dose_response.png").stat().st_size > 0


def test_worlds_with_other_prompt_counts_are_cut_to_the_smallest():
    from dppo.evaluate.study import balance_prompts

    table = simulated_scores({"teach": {"dpo": 0.0, "unll": 0.1}}, n_worlds=2, n_prompts=10)
    table = table[~((table["world"] == 1) & (table["prompt_id"].isin([0, 5])))]  # world 1 lost two prompts
    balanced = balance_prompts(table)
    assert balanced.groupby("world")["prompt_id"].nunique().tolist() == [8, 8]
    assert sorted(balanced.loc[balanced["world"] == 0, "prompt_id"].unique()) == list(range(8))
    assert len(balanced) == 2 * 2 * 8


def test_labels_of_the_study_are_distinct_and_name_the_controls():
    from dppo.report.study import distinct_labels

    settings = study_settings()
    labels = {name: e.label for name, e in settings.experiments.items()}
    assert len(set(distinct_labels(labels).values())) == len(labels)
    plain = load_settings({**load_yaml(ROOT / "configs" / "tiny.yaml"), "experiments": {
        "a": {"loss": "unll"}, "b": {"loss": "unll", "gen_source": "rejected"}, "c": {"loss": "unll", "gate": "random"}},
        "win_rate": {"baseline": "a"}, "claims": {}})
    assert [e.label for e in plain.experiments.values()] == [
        "unll (linear)", "unll (linear) on y_l", "unll (linear), random gate"]
    assert distinct_labels({"x": "DPO", "y": "DPO", "z": "IPO"}) == {"x": "DPO [x]", "y": "DPO [y]", "z": "IPO"}


def test_provenance_names_commit_cpu_and_switches_and_keeps_the_runs_before_it(tmp_path, monkeypatch):
    from dppo.study import KERNEL_VARIABLES, write_provenance

    for variable in KERNEL_VARIABLES:  # make test-kernels sets some of them
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    write_provenance(tmp_path, ["--keep-going"], at_once=2)
    first = json.loads((tmp_path / "provenance.json").read_text())
    assert first["kernels"] == {"MKL_CBWR": "COMPATIBLE"} and first["snakemake_args"] == ["--keep-going"]
    assert first["threads_per_job"] == 1 and first["runs_at_once"] == 2
    assert first["commit"] != "unknown" and first["cpu"]
    monkeypatch.delenv("MKL_CBWR")
    write_provenance(tmp_path, [], at_once=1)
    second = json.loads((tmp_path / "provenance.json").read_text())
    assert second["kernels"] == {} and second["earlier"] == [first]


def test_the_study_runs_cells_at_once_and_a_failed_one_stops_the_rest(monkeypatch):
    import threading
    import time

    import dppo.study as driver

    study = StudySettings(worlds=3, designs={"a": (0.0, 0.6), "b": (0.6, 0.0)})
    running, most, started = [0], [0], []
    lock = threading.Lock()

    def fake_run_world(_study, _configs, design, world, _cores, _extra):
        with lock:
            started.append((design, world))
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if (design, world) == ("a", 1):
            raise RuntimeError("a world 1: Snakemake failed (1); see a/world-1/study.log")

    monkeypatch.setattr(driver, "run_world", fake_run_world)
    with pytest.raises(SystemExit, match="a world 1: .*a/world-1/study.log"):
        driver.run_all(study, [], cores=2, extra=[])
    assert most[0] == 2 and len(started) < 6  # two at a time; the cells after the failure never started
    started.clear()
    monkeypatch.setattr(driver, "run_world", lambda _s, _c, design, world, _n, _e: started.append((design, world)))
    driver.run_all(study, [], cores=4, extra=[])
    assert sorted(started) == [(d, w) for d in ("a", "b") for w in range(3)]
