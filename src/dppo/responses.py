"""The two generation stages: y_gen (the reference model's greedy answer to every
preference-training prompt) and the evaluation answers of every model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dppo.generation import generate_greedy
from dppo.io import load_tokenizer, write_parquet


def _generate(model_dir, prompt_ids: list[list[int]], max_new_tokens: int, gen_cfg: dict) -> list[list[int]]:
    return generate_greedy(
        model_dir, prompt_ids, max_new_tokens,
        backend=gen_cfg.get("backend", "transformers"),
        batch_size=gen_cfg.get("batch_size", 64),
        dtype=gen_cfg.get("dtype", "auto"),
        vllm_python=gen_cfg.get("vllm_python") if gen_cfg.get("backend") == "vllm" else None,
        vllm_options=gen_cfg.get("vllm_options"),
        device=gen_cfg.get("device"),
        trust_remote_code=gen_cfg.get("trust_remote_code", False),
    )


def _cutoff(stats_file) -> int:
    """The token cut-off that data preparation applied (prompt + response)."""
    return json.loads(Path(stats_file).read_text())["cutoff"]


def pregenerate_ygen(model_dir, pref_train_file, stats_file, out_file, gen_cfg: dict) -> pd.DataFrame:
    """y_gen for every training row, within the row's truncation budget (cut-off minus prompt
    length), so prompt + y_gen obeys the same cut as prompt + y_w."""
    rows = pd.read_parquet(pref_train_file)
    cutoff = _cutoff(stats_file)
    prompts = list(rows["prompt_ids"])  # generate_greedy checks and converts them
    budgets = [max(1, cutoff - len(p)) for p in prompts]
    generated = _generate(model_dir, prompts, gen_cfg.get("max_new_tokens") or max(budgets), gen_cfg)
    gen_ids = [ids[:budget] for ids, budget in zip(generated, budgets)]
    tokenizer = load_tokenizer(model_dir)
    out = pd.DataFrame({
        "prompt_id": rows["prompt_id"],
        "gen_ids": gen_ids,
        "gen": [tokenizer.decode(ids, skip_special_tokens=True) for ids in gen_ids],
    })
    write_parquet(out_file, out)
    return out


def generate_answers(model_dir, test_file, stats_file, out_file, gen_cfg: dict, max_prompts: int | None = None) -> pd.DataFrame:
    """Greedy answers of ``model_dir`` to the held-out prompts (the first ``max_prompts``
    distinct ones: a prompt asked twice would count twice in the win rate)."""
    rows = pd.read_parquet(test_file).drop_duplicates("prompt_id")
    if max_prompts is not None:
        rows = rows.iloc[:max_prompts]
    generated = _generate(model_dir, list(rows["prompt_ids"]), gen_cfg.get("max_new_tokens") or _cutoff(stats_file), gen_cfg)
    tokenizer = load_tokenizer(model_dir)
    out = pd.DataFrame({
        "prompt_id": rows["prompt_id"].to_numpy(),
        "prompt": rows["prompt"].to_numpy(),
        "response": [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated],
    })
    write_parquet(out_file, out)
    return out
