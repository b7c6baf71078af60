"""Shared fixtures: a real tiny transformers model + tokenizer, built locally (no download), and
one end-to-end run of the tiny config shared by the workflow and determinism tests."""

from __future__ import annotations

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
