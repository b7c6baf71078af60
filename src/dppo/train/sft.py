"""Supervised fine-tuning: next-token loss on the assistant tokens only (prompt masked).

The loss is the mean negative log-likelihood over the batch's response tokens; the model's
head runs only at the positions that predict a response token (:mod:`dppo.train.logprobs`), so the
prompt never costs a vocabulary-sized projection and carries no loss.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from dppo.runtime.io import load_causal_lm, load_tokenizer, pad_token_id
from dppo.settings import OptimSettings
from dppo.train.logprobs import response_logps
from dppo.train.loop import train
from dppo.train.publish import publish_runs


def sft_rows(frame: pd.DataFrame) -> list[dict]:
    """Prepared SFT rows (``prompt_ids``, ``response_ids``) as plain int lists."""
    return [{"prompt_ids": [int(t) for t in p], "response_ids": [int(t) for t in r]}
            for p, r in zip(frame["prompt_ids"], frame["response_ids"])]


class SFTTask:
    """Token-mean NLL of the responses, for :func:`dppo.train.loop.train`."""

    def __init__(self, rows: list[dict], pad: int):
        self.rows = rows
        self.pad = pad

    def loss(self, model, rows):
        sums = response_logps(model, [r["prompt_ids"] for r in rows], [[r["response_ids"]] for r in rows], self.pad).sums
        return -sums.sum() / self.weight(rows), {}

    def weight(self, rows) -> int:
        return sum(len(r["response_ids"]) for r in rows)

    def lengths(self) -> list[int]:
        return [len(r["prompt_ids"]) + len(r["response_ids"]) for r in self.rows]

    def step_metrics(self, model, step: int, total: int) -> dict[str, float]:
        return {}


def train_sft(model_dir: str | Path, train_file: str | Path, out_dir: str | Path, metrics_file: str | Path,
              checkpoint_dir: str | Path, opt: OptimSettings, trust_remote_code: bool = False,
              distributed: str = "ddp") -> None:
    """Fine-tune ``model_dir`` on the prepared SFT split; save the model to ``out_dir`` and the
    per-step metrics to ``metrics_file``. A killed run resumes from ``checkpoint_dir``."""
    torch.manual_seed(opt.seed)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    model = load_causal_lm(model_dir, trust_remote_code, dtype=torch.float32)  # fp32 weights; bf16 autocast on GPUs
    rows = sft_rows(pd.read_parquet(train_file))
    task = SFTTask(rows, pad_token_id(tokenizer))
    run_dir = train(model, tokenizer, rows, task, opt, checkpoint_dir, {"stage": "sft", "rows": len(rows)},
                    distributed=distributed)
    publish_runs({"": run_dir}, out_dir, metrics_file, checkpoint_dir)


def sft_job(opt: dict, model_dir: str, train_file: str, out_dir: str, metrics_file: str, checkpoint_dir: str,
            trust_remote_code: bool, distributed: str = "ddp") -> None:
    """:func:`train_sft` from plain arguments (for :func:`dppo.runtime.launch.run_job`)."""
    train_sft(model_dir, train_file, out_dir, metrics_file, checkpoint_dir, OptimSettings.from_dict(opt, "sft"),
              trust_remote_code, distributed)
