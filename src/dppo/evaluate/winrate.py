"""Comparisons of models on the same held-out prompts: win rates against the SFT model and
paired differences against DPO, averaged per prompt over seeds, with bootstrap intervals and
the smallest difference each comparison can detect.

A model's answer to a prompt wins (1) when its reward beats the SFT model's answer's, ties
(1/2) or loses (0). An experiment's per-prompt value is the mean over its seeds (its win
score, its reward, whether its reward is negative). Every statistic is a mean over prompts;
its interval is the percentile bootstrap over prompts, with ONE set of resampled prompts for
every experiment, so a difference between two experiments is a paired comparison on the same
prompts. The power of a comparison is reported as its minimum detectable difference (MDE):
the true difference it detects with 80% power at the 5% level, (z_0.975 + z_0.8) x its
bootstrap standard error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dppo.settings import WinRateSettings

# Bootstrap draws are generated in blocks of at most this many indices (bounded memory).
_BOOT_BLOCK = 1 << 22
MDE_Z = 1.959964 + 0.841621  # two-sided 5% test, 80% power
METRICS = ("win", "reward", "negative")  # per-prompt values every comparison is made on
REFERENCE = "sft"  # the model every win rate is against


def win_scores(reward: np.ndarray, reward_reference: np.ndarray) -> np.ndarray:
    """1 where ``reward`` wins, 0.5 on a tie, 0 where it loses."""
    reward, reward_reference = np.asarray(reward, dtype=float), np.asarray(reward_reference, dtype=float)
    return (reward > reward_reference) + 0.5 * (reward == reward_reference)


def _check_scores(name: str, table: pd.DataFrame) -> None:
    missing = {"seed", "prompt_id", "reward"} - set(table.columns)
    if missing:
        raise ValueError(f"scores of {name!r} lack column(s) {sorted(missing)}")
    repeated = table.duplicated(["seed", "prompt_id"])
    if repeated.any():
        raise ValueError(f"scores of {name!r} repeat prompt_id {table.loc[repeated, 'prompt_id'].iloc[0]!r}")
    if table["reward"].isna().any():
        raise ValueError(f"scores of {name!r} contain {int(table['reward'].isna().sum())} missing rewards")


def _reference_answers(scores: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The SFT model's reward per prompt and, where every model's scores carry their answers,
    its answer (the one of its first seed: greedy answers do not vary with the seed)."""
    table = scores[REFERENCE].sort_values("seed", kind="stable").groupby("prompt_id")
    reference = table["reward"].mean().rename("reward_reference").to_frame()
    if all("response" in t for t in scores.values()):
        reference["response_reference"] = table["response"].first()
    return reference


def per_seed_scores(scores: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every model's reward of every (seed, prompt) with the SFT answer's reward beside it:
    ``name, seed, prompt_id, reward, reward_reference, win, negative`` and, where the scores carry
    the answers, ``same_as_reference`` (1 where the answer is the SFT answer's exact string).

    Every model must have scored exactly the SFT model's prompts, for every seed: a win rate
    over other prompts compares nothing."""
    if REFERENCE not in scores:
        raise ValueError(f"no scores for the reference model {REFERENCE!r}")
    for name, table in scores.items():
        _check_scores(name, table)
    reference = _reference_answers(scores)
    answers = "response_reference" in reference
    frames = []
    for name, table in scores.items():
        for seed, part in table.groupby("seed", sort=True):
            ids, ref_ids = set(part["prompt_id"]), set(reference.index)
            if ids != ref_ids:
                only, only_ref = sorted(ids - ref_ids), sorted(ref_ids - ids)
                raise ValueError(f"{name!r} (seed {seed}) and {REFERENCE!r} scored different prompts: {len(only)} only "
                                 f"in {name!r} (e.g. {only[:3]}), {len(only_ref)} only in {REFERENCE!r} (e.g. {only_ref[:3]})")
            merged = part[["seed", "prompt_id", "reward", *(["response"] if answers else [])]].join(reference,
                                                                                                 on="prompt_id")
            merged.insert(0, "name", name)
            frames.append(merged)
    long = pd.concat(frames, ignore_index=True)
    long["win"] = win_scores(long["reward"], long["reward_reference"])
    long["negative"] = (long["reward"] < 0).astype(float)
    if answers:
        long["same_as_reference"] = (long.pop("response") == long.pop("response_reference")).astype(float)
    return long.sort_values(["name", "seed", "prompt_id"], kind="stable").reset_index(drop=True)


def per_prompt(long: pd.DataFrame) -> pd.DataFrame:
    """Seed means per (model, prompt): ``name, prompt_id, win, reward, negative, n_seeds``."""
    grouped = long.groupby(["name", "prompt_id"], sort=True)
    table = grouped[list(METRICS)].mean()
    table["n_seeds"] = grouped.size()
    return table.reset_index()


def _resample_indices(rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
    # One double per index: a block of draws consumes the stream exactly like row-by-row draws,
    # so results do not depend on the block size.
    return np.minimum((rng.random((n_rows, n)) * n).astype(np.int64), n - 1)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples of the rows of ``values`` (shape (n,) or (n, k)): the same
    resampled rows for every column, so column differences are paired. Shape (n_boot,) or
    (n_boot, k)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BOOT_BLOCK // n)
    means = np.empty((n_boot, *values.shape[1:]))
    for start in range(0, n_boot, rows_per_block):
        stop = min(n_boot, start + rows_per_block)
        means[start:stop] = values[_resample_indices(rng, stop - start, n)].mean(axis=1)
    return means


def interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``draws`` (along axis 0) at confidence ``level``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return low, high


def bootstrap_interval(values: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values``."""
    low, high = interval(bootstrap_means(values, n_boot, seed), level)
    return float(low), float(high)


def _matrix(prompts: pd.DataFrame, metric: str, names: Sequence[str]) -> np.ndarray:
    """(prompts, models) of one per-prompt metric, prompts in one fixed order."""
    wide = prompts.pivot(index="prompt_id", columns="name", values=metric)
    return wide.loc[:, list(names)].to_numpy()


def against_sft(long: pd.DataFrame, prompts: pd.DataFrame, names: Sequence[str],
                settings: WinRateSettings) -> pd.DataFrame:
    """Per model: win rate against SFT, mean reward and share of negative rewards, each with
    its interval, and the spread of the per-seed win rates."""
    rows = {name: {"name": name} for name in names}
    for metric, column in (("win", "win_rate"), ("reward", "mean_reward"), ("negative", "frac_negative")):
        values = _matrix(prompts, metric, names)
        low, high = interval(bootstrap_means(values, settings.n_boot, settings.seed), settings.level)
        for k, name in enumerate(names):
            rows[name].update({column: values[:, k].mean(), f"{column}_low": low[k], f"{column}_high": high[k]})
    per_seed = long.groupby(["name", "seed"])["win"].mean()
    for name in names:
        seeds = per_seed.loc[name]
        wins = long.loc[long["name"] == name, "win"]
        rows[name].update({
            "win_rate_seed_sd": float(seeds.std(ddof=1)) if len(seeds) > 1 else float("nan"),
            "n_seeds": int(len(seeds)),
            "n_prompts": int(prompts.loc[prompts["name"] == name, "prompt_id"].nunique()),
            "n_wins": int((wins == 1.0).sum()), "n_ties": int((wins == 0.5).sum()), "n_losses": int((wins == 0.0).sum()),
            **_changed_answers(long[long["name"] == name]),
        })
    reference = long[long["name"] == REFERENCE]
    table = pd.DataFrame([rows[n] for n in names])
    table["mean_reward_reference"] = float(reference["reward"].mean())
    table["frac_negative_reference"] = float(reference["negative"].mean())
    return table


def _changed_answers(rows: pd.DataFrame) -> dict:
    """How many of a model's answers are not the SFT answer's string (``n_changed``; NaN where
    the scores carry no answers), and the share of those that win (``win_share_of_changed``): a
    win rate against SFT is diluted by every unchanged answer, a tie by construction."""
    if "same_as_reference" not in rows:
        return {"n_changed": pd.NA, "win_share_of_changed": float("nan")}
    changed = rows[rows["same_as_reference"] == 0.0]
    share = float((changed["win"] == 1.0).mean()) if len(changed) else float("nan")
    return {"n_changed": int(len(changed)), "win_share_of_changed": share}


def paired_differences(prompts: pd.DataFrame, names: Sequence[str], baseline: str,
                       settings: WinRateSettings) -> pd.DataFrame:
    """Per model: the paired difference from ``baseline`` (model minus baseline, per prompt,
    seed means) of the win rate against SFT, the mean reward and the share of negative rewards,
    with the interval and the minimum detectable difference of each."""
    if baseline not in set(prompts["name"]):
        raise ValueError(f"no scores for the paired baseline {baseline!r}")
    rows = {name: {"name": name, "baseline": baseline} for name in names}
    for metric, column in (("win", "d_win_rate"), ("reward", "d_mean_reward"), ("negative", "d_frac_negative")):
        values = _matrix(prompts, metric, [*names, baseline])
        diffs = values[:, :-1] - values[:, -1:]
        draws = bootstrap_means(diffs, settings.n_boot, settings.seed)
        low, high = interval(draws, settings.level)
        se = draws.std(axis=0, ddof=1)
        for k, name in enumerate(names):
            rows[name].update({column: diffs[:, k].mean(), f"{column}_low": low[k], f"{column}_high": high[k],
                               f"{column}_mde": MDE_Z * se[k]})
    return pd.DataFrame([rows[n] for n in names])


def difference(prompts: pd.DataFrame, a: str, b: str, metric: str, settings: WinRateSettings) -> dict[str, float]:
    """The paired difference a - b of one per-prompt metric: mean, interval, MDE."""
    values = _matrix(prompts, metric, [a, b])
    diffs = values[:, 0] - values[:, 1]
    draws = bootstrap_means(diffs, settings.n_boot, settings.seed)
    low, high = interval(draws, settings.level)
    return {"diff": float(diffs.mean()), "low": float(low), "high": float(high),
            "mde": float(MDE_Z * draws.std(ddof=1)), "n_prompts": int(len(diffs))}
