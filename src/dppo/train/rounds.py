"""On-policy DPPO in rounds: which steps of the one run each round takes, and the record of how far
y_gen moved from one round to the next. Torch-free (the drift table's rule imports it alone).

An experiment with ``rounds: R`` is ONE run of T optimizer steps (T: what the same experiment takes
in one round, with its learning-rate schedule over all T), cut into R parts: round k takes steps
[(k-1) T / R, k T / R) (whole steps, the last ending at T), continuing round k-1's state
(weights, optimizer, RNG; the batch order is a function of seed and step) on y_gen regenerated
greedily by round k-1's policy (round 1: the SFT model's y_gen). The reference stays the SFT
model. With an unchanged y_gen the R rounds therefore end bit-identical to the one-round run
(tests/test_rounds.py): the comparison with it is on-policy against off-policy and nothing else.
Each round is its own Snakemake job (workflow/rules/rounds.smk); the training job of a round is
:func:`dppo.train.preference.round_job`, the regeneration :func:`dppo.infer.answers.pregenerate_round`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

DRIFT_COLUMNS = ("experiment", "round", "seed", "prompts", "changed_share", "logp_old_mean", "logp_new_mean")


def round_steps(total: int, rounds: int, k: int) -> tuple[int, int]:
    """(first step, stop step) of round ``k`` (1-based) of ``rounds`` over ``total`` steps: steps
    ``[start, stop)``, 0-based; the rounds tile ``[0, total)`` and the last ends at ``total``."""
    if not 1 <= k <= rounds:
        raise ValueError(f"round {k} of {rounds}")
    if total < rounds:
        raise ValueError(f"{rounds} rounds need at least one optimizer step each, but the run takes {total}")
    return (k - 1) * total // rounds, k * total // rounds


def seed_file(directory: str | Path, seed: int, suffix: str = ".parquet") -> Path:
    """A round's per-seed file (``seed-<s>.parquet``) in one of its directories (y_gen, reference)."""
    return Path(directory) / f"seed-{seed}{suffix}"


def drift_record(experiment: str, k: int, seed: int, old_ids: list[list[int]], new_ids: list[list[int]],
                 logp_old: Iterable[float], logp_new: Iterable[float]) -> dict:
    """How far y_gen moved into round ``k``: the share of prompts whose greedy answer changed and
    the mean (over rows) log-prob of the old and the new y_gen under the policy that generated
    the new one (round k-1's)."""
    if len(old_ids) != len(new_ids):
        raise ValueError(f"{len(old_ids)} old and {len(new_ids)} new answers")
    changed = sum(list(a) != list(b) for a, b in zip(old_ids, new_ids))
    old, new = list(map(float, logp_old)), list(map(float, logp_new))
    return {"experiment": experiment, "round": k, "seed": seed, "prompts": len(new_ids),
            "changed_share": changed / max(1, len(new_ids)),
            "logp_old_mean": sum(old) / max(1, len(old)), "logp_new_mean": sum(new) / max(1, len(new))}


def drift_table(files: Iterable[str | Path]) -> pd.DataFrame:
    """Every round's drift records (the ``drift.json`` each regeneration job writes: a list of
    per-seed records), one row per (experiment, round, seed)."""
    rows = [record for path in files for record in json.loads(Path(path).read_text())]
    table = pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))
    return table.sort_values(["experiment", "round", "seed"], kind="stable").reset_index(drop=True)


def merged_metrics(rounds: list[Mapping[int, bytes]]) -> bytes:
    """The experiment's metrics file from each round's per-seed metrics (``rounds[k-1]``: seed ->
    that seed's lines of round k): seed by seed, as a one-round job writes them, each seed's
    rounds in order (so its steps increase)."""
    seeds = list(rounds[-1])
    for k, per_seed in enumerate(rounds, 1):
        if list(per_seed) != seeds:
            raise ValueError(f"round {k} has the seeds {list(per_seed)}, the last round {seeds}")
    return b"".join(per_seed[seed] for seed in seeds for per_seed in rounds)


def split_by_seed(metrics: bytes) -> dict[int, bytes]:
    """A metrics file's lines by their ``seed`` field (each seed's lines in file order)."""
    out: dict[int, list[bytes]] = {}
    for line in metrics.splitlines(keepends=True):
        out.setdefault(int(json.loads(line)["seed"]), []).append(line)
    return {seed: b"".join(lines) for seed, lines in out.items()}
