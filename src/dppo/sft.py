"""Supervised fine-tuning: next-token loss on the assistant tokens only (prompt masked)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from transformers import Trainer

from dppo.io import load_causal_lm, load_tokenizer, pad_token_id
from dppo.settings import OptimSettings
from dppo.training import RunPaths, fit_and_save

IGNORE_INDEX = -100  # label value the causal-LM loss skips


def sft_example(prompt_ids: list[int], response_ids: list[int]) -> dict:
    """input_ids = prompt + response; labels copy the response and mask the prompt."""
    prompt_ids, response_ids = list(prompt_ids), list(response_ids)
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


class SFTCollator:
    """Right-pads a batch to its longest row (dynamic padding); padding gets no loss."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def train_sft(model_dir: str | Path, train_file: str | Path, paths: RunPaths, opt: OptimSettings,
              trust_remote_code: bool = False) -> None:
    """Fine-tune ``model_dir`` on the prepared SFT split and save to ``paths.out_dir``.

    Resumes from the newest checkpoint in ``paths.checkpoint_dir`` when a previous run was killed.
    """
    torch.manual_seed(opt.seed)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    model = load_causal_lm(model_dir, trust_remote_code)
    frame = pd.read_parquet(train_file)
    rows = [sft_example(p, r) for p, r in zip(frame["prompt_ids"], frame["response_ids"])]
    pad = pad_token_id(tokenizer)
    fit_and_save(
        Trainer, model=model, tokenizer=tokenizer, rows=rows, collator=SFTCollator(pad), opt=opt,
        paths=paths, record={"stage": "sft", "rows": len(rows)},
    )


def sft_job(opt: dict, model_dir: str, train_file: str, paths: dict, trust_remote_code: bool) -> None:
    """:func:`train_sft` from plain arguments (for :func:`dppo.launch.run_job`)."""
    train_sft(model_dir, train_file, RunPaths(**paths), OptimSettings.from_dict(opt, "sft"), trust_remote_code)
