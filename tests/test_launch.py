"""Multi-process training: the same job under torchrun (2 processes, gloo on CPU) keeps the
configured effective batch size, saves once, and logs every optimizer step once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from numerics import gamma
from safetensors.torch import load_file

from dppo.runtime.launch import run_job
from dppo.train.sft import sft_job


@pytest.mark.slow
def test_sft_job_under_torchrun_keeps_the_effective_batch_and_equals_one_process(tmp_path, tiny_model_dir):
    train = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_ids": [[2, 24, 20, 23, 4 + i % 5, 3, 2, 25] for i in range(16)],
                  "response_ids": [[4 + i % 5, 3] for i in range(16)]}).to_parquet(train)

    def job(name, n_gpus):
        kwargs = dict(opt={"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0}, model_dir=str(tiny_model_dir),
                      train_file=str(train), out_dir=str(tmp_path / name), metrics_file=str(tmp_path / f"{name}.jsonl"),
                      checkpoint_dir=str(tmp_path / f"ckpt-{name}"), trust_remote_code=False)
        run_job(sft_job, kwargs, n_gpus=n_gpus)
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

    two, one = job("two", 2), job("one", 1)
    assert [m["step"] for m in two] == [1, 2, 3, 4]  # 16 rows / effective batch 4, whatever the process count
    record = json.loads((tmp_path / "two" / "dppo_training.json").read_text())
    assert record["steps"] == 4
    # two processes of two rows each add up to the one-process batch of four (float rounding aside)
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-5)
    a, b = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    # Same weights up to float rounding, normwise (Adam divides each gradient element by its own
    # scale, so a near-zero element's rounding can move its update by a lot): the two runs sum the
    # batch's gradient in other orders, so each step's update differs relatively by at most about
    # gamma_n of its longest sum (the intermediate width, or the tokens of one batch), twice over
    # (m and sqrt(v)); first order, over the steps.
    config = json.loads((tiny_model_dir / "config.json").read_text())
    longest_sum = max(config["intermediate_size"], 4 * 10)
    init = load_file(tiny_model_dir / "model.safetensors")
    change = torch.cat([(b[k] - init[k]).flatten() for k in b]).double()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b]).double()
    assert a.keys() == b.keys() and change.norm() > 0
    assert diff.norm() <= 2 * len(two) * gamma(longest_sum) * change.norm()
