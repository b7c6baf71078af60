"""The scoring pass of the score job: every model's answers scored with ONE reward-model load,
cached by what a score depends on (:func:`score_key`), so a changed experiment rescores only its
answers. The backends themselves: :mod:`dppo.infer.rewards`; with ``reward.engine: vllm`` the
answers go to the vLLM environment through :mod:`dppo.infer.vllm_engine` in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

import pandas as pd

from dppo.infer import vllm_engine
from dppo.infer.rewards import RewardBackend, reward_backend
from dppo.runtime.io import atomic_output_file, write_parquet
from dppo.settings import RewardSettings

log = logging.getLogger(__name__)

GENERATION_COLUMNS = ("seed", "prompt_id", "prompt", "response")


def _answers(generations: pd.DataFrame) -> pd.DataFrame:
    """The ``seed, prompt_id, prompt, response`` rows of a generations table, checked."""
    missing = [c for c in GENERATION_COLUMNS if c not in generations.columns]
    if missing:
        raise ValueError(f"generations table lacks column(s) {missing}; has {list(generations.columns)}")
    repeated = generations.duplicated(["seed", "prompt_id"])
    if repeated.any():
        raise ValueError(f"generations table repeats prompt_id {generations.loc[repeated, 'prompt_id'].iloc[0]!r}")
    return generations.loc[:, list(GENERATION_COLUMNS)].reset_index(drop=True)


def _texts(answers: pd.DataFrame) -> tuple[list[str], list[str]]:
    return answers["prompt"].astype(str).tolist(), answers["response"].fillna("").astype(str).tolist()


def score_generations(generations: pd.DataFrame, backend: RewardBackend) -> pd.DataFrame:
    """``seed, prompt_id, prompt, response`` rows -> the same rows plus a float ``reward`` column."""
    out = _answers(generations)
    out["reward"] = pd.Series(backend.score(*_texts(out)), dtype="float64")
    return out


def score_in_vllm(table: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """The vLLM side of the route (:func:`dppo.infer.vllm_engine.call`): the ``reward`` of each
    (``prompt``, ``response``) row of ``table``, with one engine start."""
    backend = reward_backend(RewardSettings.from_dict(settings, "reward"))
    return pd.DataFrame({"reward": backend.score(table["prompt"].tolist(), table["response"].tolist())})


def _scored(tables: list[pd.DataFrame], settings: RewardSettings, backend_factory) -> Iterator[pd.DataFrame]:
    """Each generations table with its rewards, in order, from ONE reward-model load: here with
    ``backend_factory``, or (engine vllm) in the vLLM environment with one call for them all."""
    if settings.engine != "vllm":
        backend = backend_factory(settings)
        for generations in tables:
            yield score_generations(generations, backend)
        return
    answers = [_answers(generations) for generations in tables]
    pairs = pd.concat([pd.DataFrame(dict(zip(("prompt", "response"), _texts(out)))) for out in answers],
                      ignore_index=True)
    rewards = vllm_engine.call(settings.vllm_python, "dppo.infer.scoring:score_in_vllm", pairs,
                               settings=settings.to_dict())["reward"].astype("float64")
    if len(rewards) != len(pairs):
        raise RuntimeError(f"the vLLM environment returned {len(rewards)} rewards for {len(pairs)} answers")
    start = 0
    for out in answers:
        out["reward"] = rewards.iloc[start : start + len(out)].to_numpy()
        start += len(out)
        yield out


def score_key(generations: pd.DataFrame, settings: RewardSettings) -> str:
    """What a score depends on: the (seed, prompt, response) rows and the reward settings."""
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for row in generations.loc[:, list(GENERATION_COLUMNS)].itertuples(index=False):
        digest.update(json.dumps(list(map(str, row))).encode())
    return digest.hexdigest()[:24]


def score_files(pairs: Sequence[tuple[str, str]], settings: RewardSettings, cache_dir: str | Path,
                backend_factory=reward_backend) -> int:
    """Score every (generations file, scores file) pair with ONE reward backend (one model load
    for the whole pass, minutes for a 70B model), and only the files whose rows or reward
    settings changed: scores are cached under ``cache_dir`` by :func:`score_key`, so a change to
    one experiment rescores only its answers. Returns the number of files scored afresh.
    ``backend_factory`` builds the backend of the engines that run in this interpreter."""
    cache_dir = Path(cache_dir)
    stale = []
    for generations_file, scores_file in pairs:
        generations = pd.read_parquet(generations_file)
        cached = cache_dir / f"{score_key(generations, settings)}.parquet"
        if cached.is_file():
            with atomic_output_file(scores_file) as tmp:
                shutil.copyfile(cached, tmp)
            log.info("%s: unchanged answers, scores from %s", generations_file, cached)
        else:
            stale.append((generations_file, generations, scores_file, cached))
    if not stale:
        log.info("reward-model loads: 0 (every answer already scored)")
        return 0
    log.info("reward-model loads: 1 (%s, %s) for %d of %d files", settings.backend, settings.engine, len(stale),
             len(pairs))
    scored = _scored([generations for _, generations, _, _ in stale], settings, backend_factory)
    for (generations_file, _, scores_file, cached), scores in zip(stale, scored):
        write_parquet(cached, scores)
        write_parquet(scores_file, scores)
        log.info("%s: %d answers, mean reward %.4f, %.1f%% negative", generations_file, len(scores),
                 scores["reward"].mean(), 100 * (scores["reward"] < 0).mean())
    return len(stale)
