"""SFT: the loss is the token-mean NLL of the responses with the prompt masked, and training
runs, logs every step and saves a loadable model."""

from __future__ import annotations

import json

import pandas as pd
from sft_checks import check_sft_loss_masks_the_prompt
from transformers import AutoModelForCausalLM

from dppo.settings import OptimSettings
from dppo.train.sft import sft_rows, train_sft

ROWS = [{"prompt_ids": [2, 24, 21, 23, 5, 3, 2, 25], "response_ids": [5, 3]},
        {"prompt_ids": [2, 24], "response_ids": [6, 7, 3]},
        {"prompt_ids": [2, 24, 20], "response_ids": [9]}]


def test_the_loss_is_the_masked_token_mean_nll(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    check_sft_loss_masks_the_prompt(model, ROWS, pad=0)


def test_sft_rows_are_plain_int_lists():
    frame = pd.DataFrame({"prompt_ids": [[1, 2]], "response_ids": [[3]]})
    assert sft_rows(frame) == [{"prompt_ids": [1, 2], "response_ids": [3]}]


def test_train_sft_saves_a_loadable_model_and_per_step_metrics(tmp_path, tiny_model_dir):
    prompts = [[2, 24, 20, 23, 4 + i % 5, 3, 2, 25] for i in range(16)]
    train = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_ids": prompts, "response_ids": [[4 + i % 5, 3] for i in range(16)]}).to_parquet(train)
    out, metrics = tmp_path / "model", tmp_path / "metrics.jsonl"
    train_sft(tiny_model_dir, train, out, metrics, tmp_path / "ckpt", OptimSettings(lr=1e-2, epochs=2, batch_size=4))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert (out / "generation_config.json").exists()
    assert not (tmp_path / "ckpt").exists()  # checkpoints are dropped once the model is saved
    AutoModelForCausalLM.from_pretrained(out)
