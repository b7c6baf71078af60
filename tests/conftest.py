"""Shared fixtures: a real tiny transformers model + tokenizer, built locally (no download), and
one end-to-end run of the tiny config shared by the workflow and determinism tests, and the files
of a few preference rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pipeline import run_tiny

from dppo.data import synthetic
from dppo.data.tiny_model import TinyModelSpec, save_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Llama with the synthetic task's ChatML tokenizer, saved with
    ``save_pretrained`` (load it with AutoModelForCausalLM / AutoTokenizer)."""
    out = tmp_path_factory.mktemp("tiny_model")
    return save_tiny_model(out, synthetic.vocabulary(), TinyModelSpec(hidden_size=32, num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=2, intermediate_size=64))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """configs/tiny.yaml end to end in a fresh directory (read it; copy it to change it)."""
    return run_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture()
def pref_files(tmp_path):
    """12 preference rows of token ids, an (arbitrary) y_gen, and the tiny data's stats: the
    files the preference stages read (pref.parquet, ygen.parquet, stats.json)."""
    rng = np.random.default_rng(0)
    n = 12
    prompts = [[2, 24, 22, 23, *rng.integers(4, 20, size=1 + i % 4).tolist(), 3, 2, 25] for i in range(n)]
    pref = pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(n)],
        "prompt_ids": prompts,
        "chosen_ids": [rng.integers(4, 20, size=2 + i % 3).tolist() + [3] for i in range(n)],
        "rejected_ids": [rng.integers(4, 20, size=1 + i % 5).tolist() + [3] for i in range(n)],
    })
    ygen = pd.DataFrame({"prompt_id": pref["prompt_id"],
                         "gen_ids": [rng.integers(4, 20, size=1 + i % 2).tolist() + [3] for i in range(n)],
                         "gen": ["x"] * n})
    pref.to_parquet(tmp_path / "pref.parquet")
    ygen.to_parquet(tmp_path / "ygen.parquet")
    (tmp_path / "stats.json").write_text(json.dumps({"cutoff": 20}))
    return tmp_path / "pref.parquet", tmp_path / "ygen.parquet", tmp_path / "stats.json"
