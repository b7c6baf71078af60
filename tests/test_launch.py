"""Multi-process training: the same job under torchrun (2 processes, gloo on CPU) keeps the
configured effective batch size, saves once, and logs every optimizer step once."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dppo.launch import run_job
from dppo.sft import sft_example


@pytest.mark.slow
def test_sft_job_under_torchrun_keeps_the_effective_batch(tmp_path, tiny_model_dir):
    rows = [sft_example([2, 24, 20, 23, 4 + i % 5, 3, 2, 25], [4 + i % 5, 3]) for i in range(16)]
    train = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_ids": [r["input_ids"][:8] for r in rows], "response_ids": [r["input_ids"][8:] for r in rows]}).to_parquet(train)
    kwargs = dict(opt={"lr": 1e-2, "epochs": 1, "batch_size": 4}, model_dir=str(tiny_model_dir), train_file=str(train),
                  out_dir=str(tmp_path / "model"), metrics_file=str(tmp_path / "metrics.jsonl"),
                  checkpoint_dir=str(tmp_path / "ckpt"))
    run_job("dppo.sft:sft_job", kwargs, n_gpus=2)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 16 rows / effective batch 4, whatever the process count
    record = json.loads((tmp_path / "model" / "dppo_training.json").read_text())
    assert record["steps"] == 4
    assert (tmp_path / "model" / "model.safetensors").exists()
