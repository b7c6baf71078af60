"""The two generation stages: y_gen (the reference model's greedy answer to every
preference-training prompt) and the evaluation answers of every model."""

from __future__ import annotations

import pandas as pd

from dppo.generation import generate_greedy
from dppo.io import load_tokenizer, write_parquet
from dppo.results import read_stats
from dppo.settings import GenerationSettings


def _cutoff(stats_file) -> int:
    """The token cut-off that data preparation applied (prompt + response)."""
    return read_stats(stats_file)["cutoff"]


def pregenerate_ygen(model_dir, pref_train_file, stats_file, out_file, settings: GenerationSettings,
                     trust_remote_code: bool = False) -> pd.DataFrame:
    """y_gen for every training row, within the row's truncation budget (cut-off minus prompt
    length), so prompt + y_gen obeys the same cut as prompt + y_w."""
    rows = pd.read_parquet(pref_train_file)
    cutoff = _cutoff(stats_file)
    prompts = list(rows["prompt_ids"])  # generate_greedy checks and converts them
    budgets = [max(1, cutoff - len(p)) for p in prompts]
    generated = generate_greedy(model_dir, prompts, settings.max_new_tokens or max(budgets), settings, trust_remote_code)
    gen_ids = [ids[:budget] for ids, budget in zip(generated, budgets)]
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    out = pd.DataFrame({
        "prompt_id": rows["prompt_id"],
        "gen_ids": gen_ids,
        "gen": [tokenizer.decode(ids, skip_special_tokens=True) for ids in gen_ids],
    })
    write_parquet(out_file, out)
    return out


def generate_answers(model_dir, test_file, stats_file, out_file, settings: GenerationSettings,
                     max_prompts: int | None, trust_remote_code: bool = False) -> pd.DataFrame:
    """Greedy answers of ``model_dir`` to the held-out prompts (the first ``max_prompts``
    distinct ones: a prompt asked twice would count twice in the win rate)."""
    rows = pd.read_parquet(test_file).drop_duplicates("prompt_id")
    if max_prompts is not None:
        rows = rows.iloc[:max_prompts]
    max_new_tokens = settings.max_new_tokens or _cutoff(stats_file)
    generated = generate_greedy(model_dir, list(rows["prompt_ids"]), max_new_tokens, settings, trust_remote_code)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    out = pd.DataFrame({
        "prompt_id": rows["prompt_id"].to_numpy(),
        "prompt": rows["prompt"].to_numpy(),
        "response": [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated],
    })
    write_parquet(out_file, out)
    return out
