"""The two generation stages: y_gen (the reference model's greedy answer to every
preference-training prompt) and the evaluation answers of every model."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import torch  # noqa: F401  (every generation job uses it: imported with the job, not inside it)

from dppo.data.stats import read_stats
from dppo.infer.generation import generate_greedy
from dppo.runtime.io import atomic_output_file, load_tokenizer, weights_digest, write_parquet
from dppo.settings import GenerationSettings

log = logging.getLogger(__name__)


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


def model_runs(root: str | Path) -> list[tuple[int, Path]]:
    """(seed, model directory) of every run under ``root``: an experiment's ``seed-<s>/``
    directories, or ``root`` itself (seed 0) when it is one model (the SFT model)."""
    root = Path(root)
    if (root / "config.json").is_file():
        return [(0, root)]
    runs = sorted((int(p.name.split("-", 1)[1]), p) for p in root.glob("seed-*") if (p / "config.json").is_file())
    if not runs:
        raise FileNotFoundError(f"{root} holds no model (config.json) and no seed-<s>/ model directories")
    return runs


def eval_prompts(test_file, max_prompts: int | None) -> pd.DataFrame:
    """The held-out prompts every model answers: the first ``max_prompts`` distinct ones (a
    prompt asked twice would count twice in the win rate)."""
    rows = pd.read_parquet(test_file).drop_duplicates("prompt_id")
    return rows.iloc[:max_prompts] if max_prompts is not None else rows


def generate_answers(model_root, prompts: pd.DataFrame, max_new_tokens: int, settings: GenerationSettings,
                     trust_remote_code: bool = False) -> pd.DataFrame:
    """Greedy answers of every run under ``model_root`` (:func:`model_runs`) to ``prompts``.
    Columns: ``seed, prompt_id, prompt, response``."""
    frames = []
    for seed, model_dir in model_runs(model_root):
        generated = generate_greedy(model_dir, list(prompts["prompt_ids"]), max_new_tokens, settings, trust_remote_code)
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
        frames.append(pd.DataFrame({
            "seed": seed,
            "prompt_id": prompts["prompt_id"].to_numpy(),
            "prompt": prompts["prompt"].to_numpy(),
            "response": [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated],
        }))
    return pd.concat(frames, ignore_index=True)


def answers_key(model_root, prompts: pd.DataFrame, max_new_tokens: int, settings: GenerationSettings) -> str:
    """What a model's answers depend on: its weights (every seed), the prompts and the
    generation settings."""
    digest = hashlib.sha256(json.dumps([settings.to_dict(), max_new_tokens], sort_keys=True).encode())
    for seed, model_dir in model_runs(model_root):
        digest.update(f"{seed}:{weights_digest(model_dir)}".encode())
    for prompt_id, ids in zip(prompts["prompt_id"], prompts["prompt_ids"]):
        digest.update(f"{prompt_id}:{list(map(int, ids))}".encode())
    return digest.hexdigest()[:24]


def generate_all(models: dict[str, str], out_files: dict[str, str], test_file, stats_file,
                 settings: GenerationSettings, max_prompts: int | None, cache_dir,
                 trust_remote_code: bool = False) -> int:
    """Every model's answers to the held-out prompts (``models``: name -> model directory,
    ``out_files``: name -> generations parquet), in one job: one process start for the whole
    grid. Answers are cached under ``cache_dir`` by :func:`answers_key`, so after a change to one
    experiment only its models generate again. Returns the number of models that generated."""
    prompts = eval_prompts(test_file, max_prompts)
    max_new_tokens = settings.max_new_tokens or _cutoff(stats_file)
    cache_dir = Path(cache_dir)
    generated = 0
    for name, root in models.items():
        cached = cache_dir / f"{answers_key(root, prompts, max_new_tokens, settings)}.parquet"
        if cached.is_file():
            log.info("%s: unchanged weights, prompts and settings; answers from %s", name, cached)
        else:
            answers = generate_answers(root, prompts, max_new_tokens, settings, trust_remote_code)
            write_parquet(cached, answers)
            generated += 1
            log.info("%s: %d answers (%d seeds)", name, len(answers), answers["seed"].nunique())
        with atomic_output_file(out_files[name]) as tmp:
            shutil.copyfile(cached, tmp)
    log.info("generated answers of %d of %d models (the others unchanged)", generated, len(models))
    return generated
