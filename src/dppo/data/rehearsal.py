"""The local inputs of the CPU rehearsal of configs/paper.yaml (configs/overlays/rehearsal.yaml):
the paper's datasets, base model and reward model replaced by small local stand-ins that keep
their formats, so every job of the paper's DAG runs its real code path on CPU, offline.

- ``inputs/smoltalk``: SmolTalk's schema and layout (``messages``, ``source``; config ``all``
  declared in the dataset card as on the hub), a few hundred rows of the synthetic task.
- ``inputs/ultrafeedback_binarized``: UltraFeedback-binarized's (``prompt``, ``prompt_id``,
  ``chosen``, ``rejected``, ``messages``, scores; splits ``train_prefs`` / ``test_prefs``).
- ``inputs/policy``: a tiny Qwen2ForCausalLM (Qwen2.5's architecture) with a ChatML template.
- ``inputs/reward``: a tiny LlamaForCausalLM read with Nemotron's protocol (Nemotron-70B is a
  Llama 3.1), with the same tokenizer.

``python -m dppo.data.rehearsal WORKDIR [--vllm-env PATH]`` writes them under WORKDIR, the
directory the rehearsal runs in, and links WORKDIR/.venv-vllm to the vLLM environment, so
paper.yaml's ``vllm_python`` (``.venv-vllm/bin/python``, relative to the working directory)
holds there as written. Deterministic: the same files every time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dppo.data import synthetic
from dppo.data.tiny_model import build_nemotron_reward_model, build_tokenizer, save_model, save_tiny_model
from dppo.settings import TaskSpec, TinyModelSpec

# A few hundred rows: a few optimizer steps at paper.yaml's batch sizes (SFT 128, preference 64).
TASK = TaskSpec(seed=0, n_sft_train=384, n_sft_test=32, n_pref_train=256, n_pref_test=48)
# Head size 32 (64 / 2): the smallest that vLLM's CPU attention supports.
POLICY = TinyModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=128, max_position_embeddings=512, seed=0)
REWARD = TinyModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=128, max_position_embeddings=1024, seed=1)
INPUTS = {"sft": "inputs/smoltalk", "pref": "inputs/ultrafeedback_binarized", "policy": "inputs/policy",
          "reward": "inputs/reward"}
# SmolTalk's dataset card names its configs; `load_dataset(path, name="all")` needs this.
SMOLTALK_CARD = """---
configs:
- config_name: all
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
A few hundred rows of dppo's synthetic task in SmolTalk's schema (the CPU rehearsal).
"""


# The overlay's list of what it changes on purpose: a YAML mapping in its comments, between these
# lines (key -> [kind, why]); a comment, so Snakemake never reads it as a config key.
CHANGES_BEGIN, CHANGES_END = "# rehearsal-changes:", "# end-rehearsal-changes"
CHANGE_KINDS = ("size", "location", "cpu")  # cpu: a setting a CPU cannot run


def listed_changes(overlay: str | Path) -> dict[str, tuple[str, str]]:
    """The overlay's "changed on purpose" block: dotted key -> (kind, why)."""
    lines = Path(overlay).read_text().splitlines()
    start, end = lines.index(CHANGES_BEGIN), lines.index(CHANGES_END)
    block = yaml.safe_load("\n".join(line.removeprefix("#") for line in lines[start + 1 : end]))
    return {key: (kind, why) for key, (kind, why) in block.items()}


def leaf_paths(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested mapping by its dotted key path (a list is one leaf)."""
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(leaf_paths(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def covered_by(path: str, keys) -> str | None:
    """The listed key that ``path`` is, or lies under; None if none."""
    return next((key for key in keys if path == key or path.startswith(f"{key}.")), None)


def write_inputs(workdir: str | Path, vllm_env: str | Path | None = None) -> dict[str, Path]:
    """Every input of the rehearsal under ``workdir`` (see the module docstring); ``vllm_env``:
    the vLLM environment WORKDIR/.venv-vllm links to (none: no link). Returns name -> path."""
    workdir = Path(workdir)
    paths = {name: workdir / rel for name, rel in INPUTS.items()}
    synthetic.write_datasets(TASK, paths["sft"], paths["pref"])
    (paths["sft"] / "README.md").write_text(SMOLTALK_CARD)
    save_tiny_model(paths["policy"], synthetic.vocabulary(), POLICY, architecture="qwen2")
    tokenizer = build_tokenizer(synthetic.vocabulary())
    save_model(paths["reward"], build_nemotron_reward_model(tokenizer, REWARD), tokenizer)
    if vllm_env is not None:
        link = workdir / ".venv-vllm"
        target = Path(vllm_env).absolute()
        if link.absolute() != target and not (link.exists() or link.is_symlink()):
            link.symlink_to(target)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="the directory the rehearsal runs in (snakemake --directory)")
    parser.add_argument("--vllm-env", default=os.environ.get("DPPO_VLLM_ENV"),
                        help="the vLLM environment to link as WORKDIR/.venv-vllm (default: $DPPO_VLLM_ENV)")
    args = parser.parse_args(argv)
    for name, path in write_inputs(args.workdir, args.vllm_env).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
