"""Win rate against the SFT model, with a percentile-bootstrap interval, and the LaTeX table.

Per experiment, on the SAME evaluation prompts (joined on ``prompt_id``): a prompt is a win
(1) when the experiment's reward beats the SFT model's, a tie counts 1/2, a loss 0. The win
rate is the mean over prompts; its 95% interval is the percentile bootstrap over prompts
(seeded, so reruns give the same numbers). Mean reward and the share of negative rewards are
reported beside it (the poster's "negative rewards decrease" claim).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dppo.results import EXPERIMENT_COLUMNS, INTEGER_COLUMNS, TABLE_COLUMNS
from dppo.settings import WinRateSettings

# Bootstrap draws are generated in blocks of at most this many indices (bounded memory).
_BOOT_BLOCK = 1 << 22



def paired_rewards(scores: pd.DataFrame, reference: pd.DataFrame, name: str = "model") -> pd.DataFrame:
    """``prompt_id, reward, reward_reference`` for the prompts both tables score, sorted by id.

    The two prompt sets must be identical: a win rate over different prompts compares nothing.
    """
    for table, who in ((scores, name), (reference, "reference")):
        missing = {"prompt_id", "reward"} - set(table.columns)
        if missing:
            raise ValueError(f"scores of {who!r} lack column(s) {sorted(missing)}")
        if table["prompt_id"].duplicated().any():
            raise ValueError(f"scores of {who!r} repeat prompt_id {table.loc[table['prompt_id'].duplicated(), 'prompt_id'].iloc[0]!r}")
        if table["reward"].isna().any():
            raise ValueError(f"scores of {who!r} contain {int(table['reward'].isna().sum())} missing rewards")
    ids, ref_ids = set(scores["prompt_id"]), set(reference["prompt_id"])
    if ids != ref_ids:
        only_model, only_ref = sorted(ids - ref_ids), sorted(ref_ids - ids)
        raise ValueError(
            f"{name!r} and the reference scored different prompts: {len(only_model)} only in {name!r} "
            f"(e.g. {only_model[:3]}), {len(only_ref)} only in the reference (e.g. {only_ref[:3]})"
        )
    merged = scores[["prompt_id", "reward"]].merge(
        reference[["prompt_id", "reward"]].rename(columns={"reward": "reward_reference"}), on="prompt_id", validate="1:1"
    )
    return merged.sort_values("prompt_id", kind="stable").reset_index(drop=True)


def win_scores(reward: np.ndarray, reward_reference: np.ndarray) -> np.ndarray:
    """1 where ``reward`` wins, 0.5 on a tie, 0 where it loses."""
    reward, reward_reference = np.asarray(reward, dtype=float), np.asarray(reward_reference, dtype=float)
    return (reward > reward_reference) + 0.5 * (reward == reward_reference)


def _resample_indices(rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
    # One double per index: a block of draws consumes the stream exactly like row-by-row draws,
    # so results do not depend on the block size (bounded-integer draws are buffered per call).
    return np.minimum((rng.random((n_rows, n)) * n).astype(np.int64), n - 1)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``; vectorised."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BOOT_BLOCK // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, rows_per_block):
        stop = min(n_boot, start + rows_per_block)
        means[start:stop] = values[_resample_indices(rng, stop - start, n)].mean(axis=1)
    return means


def bootstrap_interval(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` at confidence ``level``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(bootstrap_means(values, n_boot, seed), [tail, 100.0 - tail])
    return float(low), float(high)


def compare(scores: pd.DataFrame, reference: pd.DataFrame, n_boot: int, seed: int, level: float,
            name: str = "model") -> dict[str, float | int]:
    """Win rate of ``scores`` against ``reference`` with its bootstrap interval and reward stats."""
    paired = paired_rewards(scores, reference, name)
    wins = win_scores(paired["reward"].to_numpy(), paired["reward_reference"].to_numpy())
    low, high = bootstrap_interval(wins, n_boot, seed, level)
    return {
        "win_rate": float(wins.mean()),
        "ci_low": low,
        "ci_high": high,
        "n_wins": int((wins == 1.0).sum()),
        "n_ties": int((wins == 0.5).sum()),
        "n_losses": int((wins == 0.0).sum()),
        **reward_stats(paired["reward"].to_numpy()),
        "mean_reward_reference": float(paired["reward_reference"].mean()),
        "frac_negative_reference": float((paired["reward_reference"] < 0).mean()),
    }


def reward_stats(reward: np.ndarray) -> dict[str, float | int]:
    reward = np.asarray(reward, dtype=float)
    return {"mean_reward": float(reward.mean()), "frac_negative": float((reward < 0).mean()), "n_prompts": int(reward.size)}


def win_rate_table(scores: Mapping[str, pd.DataFrame], experiments: Sequence[Mapping], reference: str,
                   settings: WinRateSettings) -> pd.DataFrame:
    """One row per experiment of ``experiments`` (``results/experiments.json``), in that order.

    Every row also carries the reference model's mean reward and share of negative rewards
    (``*_reference``), the baseline those columns are read against.
    """
    if reference not in scores:
        raise ValueError(f"no scores for the reference model {reference!r}")
    missing = [e["name"] for e in experiments if e["name"] not in scores]
    if missing:
        raise ValueError(f"no scores for experiment(s) {missing}")
    ref = scores[reference]
    rows = []
    for exp in experiments:
        row = {col: exp.get(col) for col in EXPERIMENT_COLUMNS}
        row.update(compare(scores[exp["name"]], ref, n_boot=settings.n_boot, seed=settings.seed, level=settings.level,
                           name=exp["name"]))
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    # Nullable integers: an experiment without n_train / seed must not turn 100 into "100.0".
    return table.astype({col: "Int64" for col in INTEGER_COLUMNS})








