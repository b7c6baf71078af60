"""The CPU rehearsal of configs/paper.yaml (configs/overlays/rehearsal.yaml) changes only what it
lists, with a reason, and keeps everything else of paper.yaml: a key paper.yaml gains is either
kept by the rehearsal or listed (then docs/cluster.md says why it is not exercised). Its local
inputs (dppo.data.rehearsal) are what the overlay names: hub-schema datasets that load as the
hub's do, a Qwen2 policy with a chat template, a Nemotron-protocol Llama reward model. The
rehearsal itself runs through SLURM in CI (.ci/slurm/run_rehearsal.sh, `make rehearsal`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dppo.config import load_settings, load_yaml, merged_config, validate_config
from dppo.data.rehearsal import (
    CHANGE_KINDS,
    INPUTS,
    TASK,
    covered_by,
    leaf_paths,
    listed_changes,
    write_inputs,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper.yaml"
OVERLAY = ROOT / "configs" / "overlays" / "rehearsal.yaml"


@pytest.fixture(scope="module")
def configs():
    paper, overlay = load_yaml(PAPER), load_yaml(OVERLAY)
    merged = merged_config([paper, overlay])
    assert paper == load_yaml(PAPER)  # merging leaves its inputs as they were (compared below)
    return paper, overlay, merged


def dropped_experiments(paper: dict, merged: dict) -> list[str]:
    """paper.yaml's experiments the rehearsal's ``only_experiments`` leaves out."""
    kept = merged.get("only_experiments")
    return [name for name in paper["experiments"] if kept is not None and name not in kept]


def unexplained_paper_keys(paper: dict, merged: dict, listed) -> list[str]:
    """paper.yaml's leaf keys that the rehearsal neither keeps (same value, and run) nor lists."""
    merged_leaves = leaf_paths(merged)
    dropped = [f"experiments.{name}" for name in dropped_experiments(paper, merged)]
    return [path for path, value in leaf_paths(paper).items()
            if not covered_by(path, listed)
            and (merged_leaves.get(path, object()) != value or covered_by(path, dropped))]


def test_every_paper_key_is_kept_or_listed(configs):
    paper, _, merged = configs
    missing = unexplained_paper_keys(paper, merged, listed_changes(OVERLAY))
    assert not missing, (f"configs/paper.yaml keys the rehearsal neither keeps nor lists: {missing}; list each in "
                         f"{OVERLAY.name}'s rehearsal-changes block with its reason (and in docs/cluster.md)")


def test_a_new_paper_key_the_rehearsal_drops_or_changes_is_caught(configs):
    # The check above on paper.yaml as it would be with a new experiment (dropped by
    # only_experiments) and a new resource setting the overlay's resources replace.
    paper, overlay, _ = configs
    grown = merged_config([paper, {"experiments": {"new_loss": {"loss": "dpo"}},
                                   "resources": {"ref_logps": {"slurm_extra": "--exclusive"}}}])
    merged = merged_config([grown, overlay])
    listed = listed_changes(OVERLAY)
    assert unexplained_paper_keys(grown, merged, listed) == ["experiments.new_loss.loss"]
    # a new key under a key the overlay lists is covered by that entry
    assert covered_by("resources.sft.slurm_extra", listed) == "resources.sft"


def test_the_overlay_changes_only_what_it_lists_and_lists_only_what_it_changes(configs):
    paper, overlay, merged = configs
    listed = listed_changes(OVERLAY)
    unlisted = [path for path in leaf_paths(overlay) if not covered_by(path, listed)]
    assert not unlisted, f"{OVERLAY.name} sets keys its rehearsal-changes block does not list: {unlisted}"
    paper_leaves, merged_leaves = leaf_paths(paper), leaf_paths(merged)
    dropped = {f"experiments.{name}" for name in dropped_experiments(paper, merged)}
    for key, (kind, why) in listed.items():
        assert kind in CHANGE_KINDS and why.strip(), f"{key}: kind must be one of {CHANGE_KINDS}, with a reason"
        under = [p for p in {*paper_leaves, *merged_leaves} if covered_by(p, [key])]
        changed = key in dropped or any(paper_leaves.get(p) != merged_leaves.get(p) for p in under)
        assert changed, f"{key} is listed as changed, but the rehearsal keeps paper.yaml's value"


def test_the_rehearsal_config_is_valid_and_runs_the_paper_engines(configs, monkeypatch):
    _, _, merged = configs
    validate_config(merged)
    s = load_settings(merged)
    # what it rehearses: vLLM for generation and scoring, Nemotron's protocol, 2 training processes
    assert s.generation.engine == s.reward.engine == "vllm" and s.reward.backend == "nemotron"
    assert s.resources_for("sft")["gpu"] == 2
    # every training batch fills both processes' shares (a process with no rows breaks the step)
    pref_rows = TASK.n_pref_train
    assert all(min(e.n_train or pref_rows, pref_rows) >= e.optim.batch_size for e in s.experiments.values())
    assert {s.experiments[s.claims.dppo].init, s.experiments[s.claims.chained].init} == {"sft", s.claims.dppo}
    # the local inputs it names are the ones dppo.data.rehearsal writes
    assert [s.model.init, s.data.sft.path, s.data.pref.path, s.reward.model] == \
        [f"./{INPUTS[name]}" for name in ("policy", "sft", "pref", "reward")]


@pytest.mark.slow
def test_the_inputs_load_as_the_hub_datasets_and_models_do(tmp_path):
    import datasets
    from transformers import AutoConfig, AutoTokenizer

    from dppo.data.prepare import load_split

    paths = write_inputs(tmp_path)
    paper = load_yaml(PAPER)["data"]
    sft = load_split(str(paths["sft"]), paper["sft"]["train_split"], paper["sft"]["name"])  # config "all", as on the hub
    pref = load_split(str(paths["pref"]), paper["pref"]["test_split"], paper["pref"]["name"])
    assert set(sft.column_names) == {"messages", "source"} and 100 <= len(sft) <= 1000
    assert {"prompt", "prompt_id", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(pref.column_names)
    assert isinstance(sft.features["messages"], (list, datasets.Sequence, datasets.List))
    policy = AutoConfig.from_pretrained(paths["policy"])
    assert policy.model_type == "qwen2" and policy.hidden_size // policy.num_attention_heads >= 32  # vLLM CPU
    assert AutoTokenizer.from_pretrained(paths["policy"]).chat_template
    reward = json.loads((paths["reward"] / "config.json").read_text())
    assert reward["architectures"] == ["LlamaForCausalLM"] and reward["tie_word_embeddings"] is False


def test_docs_name_every_setting_a_cpu_cannot_run():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    cpu_only = [key for key, (kind, _) in listed_changes(OVERLAY).items() if kind == "cpu"]
    assert cpu_only and not [key for key in cpu_only if f"`{key}" not in docs]
