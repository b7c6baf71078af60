"""SFT: the prompt is masked (no loss, no gradient), padding is masked, training runs."""

from __future__ import annotations

import json

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from dppo.sft import IGNORE_INDEX, SFTCollator, sft_example, train_sft
from dppo.training import OptimConfig
from sft_checks import positions_with_gradient


def test_sft_example_masks_exactly_the_prompt():
    ex = sft_example([5, 6, 7], [8, 9])
    assert ex["input_ids"] == [5, 6, 7, 8, 9]
    assert ex["labels"] == [IGNORE_INDEX] * 3 + [8, 9]


def test_collator_pads_right_and_masks_padding():
    batch = SFTCollator(pad_token_id=0)([sft_example([5, 6], [7]), sft_example([5], [6, 7, 8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 7, 8]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX], [IGNORE_INDEX, 6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_masked_positions_get_no_gradient(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = SFTCollator(pad_token_id=0)([sft_example([2, 24, 21, 23, 5, 3, 2, 25], [5, 3]), sft_example([2, 24], [6, 7, 3])])
    gets_gradient, predicts_response = positions_with_gradient(model, batch)
    # position t predicts token t+1: it carries gradient iff labels[t+1] is a response token
    assert torch.equal(gets_gradient, predicts_response)
    assert int(predicts_response.sum()) == 5  # 2 + 3 response tokens


def test_train_sft_saves_a_loadable_model_and_per_step_metrics(tmp_path, tiny_model_dir):
    rows = [sft_example([2, 24, 20, 23, 4 + i % 5, 3, 2, 25], [4 + i % 5, 3]) for i in range(16)]
    train = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_ids": [r["input_ids"][:8] for r in rows], "response_ids": [r["input_ids"][8:] for r in rows]}).to_parquet(train)
    out, metrics = tmp_path / "model", tmp_path / "metrics.jsonl"
    train_sft(tiny_model_dir, train, out, metrics, OptimConfig(lr=1e-2, epochs=2, batch_size=4), tmp_path / "ckpt")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert (out / "generation_config.json").exists()
    assert not (tmp_path / "ckpt").exists()  # checkpoints are dropped once the model is saved
    AutoModelForCausalLM.from_pretrained(out)
