"""The two generation stages: y_gen (the reference model's greedy answer to every
preference-training prompt) and the evaluation answers of every model."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from dppo.data.stats import read_stats
from dppo.infer.generation import generate_greedy
from dppo.runtime.io import (
    atomic_output_dir,
    atomic_output_file,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
    weights_digest,
    write_parquet,
    write_text,
)
from dppo.settings import GenerationSettings
from dppo.train.logprobs import response_logps
from dppo.train.rounds import drift_record

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


def pregenerate_job(generation: dict, **kwargs) -> None:
    """:func:`pregenerate_ygen` from plain arguments (for :func:`dppo.runtime.launch.run_rule_job`)."""
    pregenerate_ygen(settings=GenerationSettings.from_dict(generation, "generation"), **kwargs)


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


def generate_all_job(generation: dict, **kwargs) -> None:
    """:func:`generate_all` from plain arguments (for :func:`dppo.runtime.launch.run_rule_job`)."""
    generate_all(settings=GenerationSettings.from_dict(generation, "generation"), **kwargs)


@torch.no_grad()
def _mean_logps(model_dir, prompts: list[list[int]], responses: list[list[list[int]]], batch_size: int,
                trust_remote_code: bool) -> list[list[float]]:
    """Per row, the log-prob under ``model_dir`` of each of its responses (float32, batches of ``batch_size``)."""
    model = load_causal_lm(model_dir, trust_remote_code, dtype=torch.float32).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    pad = pad_token_id(load_tokenizer(model_dir, trust_remote_code))
    out = []
    for start in range(0, len(prompts), batch_size):
        sums = response_logps(model, prompts[start : start + batch_size], responses[start : start + batch_size], pad).sums
        out += sums.float().cpu().tolist()
    return out


def pregenerate_round(model_root, pref_train_file, stats_file, old_ygen, out_dir, drift_file,
                      settings: GenerationSettings, experiment: str, round_k: int, seeds: list[int],
                      refresh_max_new_tokens: int | None = None, trust_remote_code: bool = False) -> list[dict]:
    """y_gen of round ``round_k`` of an on-policy experiment (:mod:`dppo.train.rounds`): per seed,
    the greedy answer of round k-1's model (``model_root/seed-<s>``) to every training prompt,
    generated as :func:`pregenerate_ygen` does (``refresh_max_new_tokens``, when set, caps its
    length), written to ``out_dir/seed-<s>.parquet``; and ``drift_file``, how far it moved from
    the y_gen round k-1 trained on (``old_ygen``: the SFT model's file, or round k-1's directory):
    the share of changed answers, and the mean log-prob of the old and the new y_gen under round
    k-1's model. Returns the drift records."""
    if refresh_max_new_tokens is not None:
        settings = replace(settings, max_new_tokens=refresh_max_new_tokens)
    prompts = [[int(t) for t in p] for p in pd.read_parquet(pref_train_file)["prompt_ids"]]
    records = []
    with atomic_output_dir(out_dir) as tmp:
        for seed in seeds:
            model_dir = Path(model_root) / f"seed-{seed}"
            old_file = Path(old_ygen) / f"seed-{seed}.parquet" if Path(old_ygen).is_dir() else Path(old_ygen)
            old = [[int(t) for t in ids] for ids in pd.read_parquet(old_file)["gen_ids"]]
            new = [[int(t) for t in ids] for ids in
                   pregenerate_ygen(model_dir, pref_train_file, stats_file, tmp / f"seed-{seed}.parquet", settings,
                                    trust_remote_code)["gen_ids"]]
            logps = _mean_logps(model_dir, prompts, [[a, b] for a, b in zip(old, new)], settings.batch_size,
                                trust_remote_code)
            record = drift_record(experiment, round_k, seed, old, new, [v[0] for v in logps], [v[1] for v in logps])
            log.info("round %d, seed %d: %.1f%% of y_gen changed; mean log-prob of the old %.3f, the new %.3f",
                     round_k, seed, 100 * record["changed_share"], record["logp_old_mean"], record["logp_new_mean"])
            records.append(record)
    write_text(drift_file, json.dumps(records, indent=1))
    return records


def pregenerate_round_job(generation: dict, **kwargs) -> None:
    """:func:`pregenerate_round` from plain arguments (for :func:`dppo.runtime.launch.run_rule_job`)."""
    pregenerate_round(settings=GenerationSettings.from_dict(generation, "generation"), **kwargs)
