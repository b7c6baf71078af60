"""The study's evidence: every comparison over the replicated pipelines (worlds) of each design
point of the embedded task, read from the worlds' per-prompt scores.

Inputs: one long table ``design, world, experiment, seed, prompt_id, reward, win, negative`` (every
world's ``results/tables/prompt_scores.parquet`` with the design and world added; ``win`` is the
answer's score against the SFT model's answer, 1 / 1/2 / 0) and the experiments' settings (their
``results/experiments.json``, the same in every world). Every interval is
:func:`dppo.evaluate.replicates.replicated_interval`: over worlds, so it includes the data draw, the
SFT model, y_gen, the training seeds and the prompts; conditional on the machine.

Comparisons with DPO come in two readings: the difference of the two win rates against SFT
(``d_win``), and the direct one, the two answers to the same prompt by the same seed position
compared with each other (``net_direct``: the share A wins minus the share B wins; ties, often
most answers, count 0). Choices made from results (the best alpha of a penalty, the best beta of
DPO) are made on the validation half of each world's prompts and tested on the other half.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dppo.evaluate.replicates import (
    aa_check,
    alpha_trend_test,
    interior_beats_ends,
    paired_differences,
    replicated_interval,
    split_prompts,
    verdict,
)

BASELINE = "dpo"
INTERVAL_KEYS = ("estimate", "low", "high", "se", "df", "mde", "over")


def _interval_columns(result: Mapping, prefix: str) -> dict:
    out = {f"{prefix}{key}": result[key] for key in INTERVAL_KEYS}
    out[f"{prefix}conditional_on"] = "+".join(result["conditional_on"])
    return out


def _components(result: Mapping) -> dict:
    shares = result["components"]["share"]
    return {f"share_{level}": shares.get(level, np.nan) for level in ("world", "seed", "prompt", "seed_x_prompt")}


def balance_prompts(table: pd.DataFrame) -> pd.DataFrame:
    """Every world with the same number of held-out prompts (the design of
    :mod:`dppo.evaluate.replicates` is balanced): the first P prompt ids of each world, in id
    order, P the smallest count (a world's preparation may drop a few duplicates)."""
    counts = table.groupby(["design", "world"])["prompt_id"].nunique()
    keep = int(counts.min())
    first = (table[["design", "world", "prompt_id"]].drop_duplicates().sort_values("prompt_id")
             .groupby(["design", "world"]).head(keep))
    return table.merge(first, on=["design", "world", "prompt_id"])


def values_of(table: pd.DataFrame, design: str, column: str) -> pd.DataFrame:
    """One design's rows as the ``world, experiment, seed, prompt_id, value`` table of
    :mod:`dppo.evaluate.replicates`."""
    rows = table[table["design"] == design]
    return rows[["world", "experiment", "seed", "prompt_id"]].assign(value=rows[column].to_numpy(float))


def direct_comparison(rewards: pd.DataFrame, a: str, b: str, level: float) -> dict:
    """A's and B's answers to the same prompt by the same seed position, compared by reward:
    the shares A wins, ties and B wins, and the interval of (A wins - B wins)."""
    pairs = paired_differences(rewards, a, b)
    sign = np.sign(pairs["diff"].to_numpy(float))
    result = replicated_interval(pairs.assign(diff=sign), level)
    return {"a_wins": float((sign > 0).mean()), "ties": float((sign == 0).mean()), "b_wins": float((sign < 0).mean()),
            "a_wins_of_changed": float((sign > 0).sum() / max(1, (sign != 0).sum())),
            **_interval_columns(result, "net_direct_")}


def compare_with_baseline(table: pd.DataFrame, design: str, names: Sequence[str], level: float,
                          baseline: str = BASELINE) -> pd.DataFrame:
    """Every experiment of ``names`` against the baseline in one design: the difference of win
    rates against SFT and of the shares of negative rewards, and the direct comparison, each with
    its replicated interval, MDE and variance components."""
    wins, negatives = values_of(table, design, "win"), values_of(table, design, "negative")
    rewards = values_of(table, design, "reward")
    rows_of_design = table[table["design"] == design]
    # the share of each run's answers that are SFT's own string (NaN where the scores carry no answers)
    same = (rows_of_design.groupby("experiment")["same_as_reference"].mean() if "same_as_reference" in table
            else pd.Series(dtype=float))
    rows = []
    for name in names:
        if name == baseline:
            continue
        d_win = replicated_interval(paired_differences(wins, name, baseline), level)
        d_negative = replicated_interval(paired_differences(negatives, name, baseline), level)
        rows.append({"design": design, "experiment": name, "baseline": baseline,
                     **_interval_columns(d_win, "d_win_"), **_components(d_win),
                     **_interval_columns(d_negative, "d_negative_"),
                     **direct_comparison(rewards, name, baseline, level),
                     "a_same_as_sft": same.get(name, np.nan), "b_same_as_sft": same.get(baseline, np.nan),
                     "n_worlds": d_win["n_worlds"], "n_seeds": d_win["n_seeds"], "n_prompts": d_win["n_prompts"]})
    return pd.DataFrame(rows)


def against(comparisons: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The rows of a comparisons table that compare with ``baseline`` (DPO, or the other
    experiment of a ``study.pairs`` entry)."""
    return comparisons[comparisons["baseline"] == baseline]


def split_rows(table: pd.DataFrame, design: str, split_seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One design's rows on each world's validation prompts and on its test prompts
    (:func:`split_prompts` per world)."""
    validation, test = [], []
    for _, part in table[table["design"] == design].groupby("world", sort=True):
        validation_ids, test_ids = split_prompts(part["prompt_id"], split_seed)
        validation.append(part[part["prompt_id"].isin(validation_ids)])
        test.append(part[part["prompt_id"].isin(test_ids)])
    return pd.concat(validation), pd.concat(test)


def best_on(rows: pd.DataFrame, candidates: Sequence[str]) -> str:
    """The candidate with the highest mean win score against SFT over ``rows``."""
    return str(rows[rows["experiment"].isin(candidates)].groupby("experiment")["win"].mean().idxmax())


def tuned_comparison(table: pd.DataFrame, design: str, method: Sequence[str], dpo: Sequence[str], level: float,
                     split_seed: int) -> dict:
    """The method at its best setting against DPO at its best, each chosen on the validation
    prompts, compared on the test prompts (so neither choice sees the prompts it is judged on)."""
    validation, test = split_rows(table, design, split_seed)
    chosen, chosen_dpo = best_on(validation, method), best_on(validation, dpo)
    result = replicated_interval(paired_differences(values_of(test, design, "win"), chosen, chosen_dpo), level)
    return {"design": design, "chosen": chosen, "chosen_dpo": chosen_dpo,
            "candidates": "/".join(sorted(method)), "dpo_candidates": "/".join(sorted(dpo)),
            **_interval_columns(result, "d_win_"), "verdict": verdict(result, "greater")}


def alpha_tests(table: pd.DataFrame, design: str, curve: Mapping[float, str], level: float, split_seed: int,
                baseline: str = BASELINE) -> dict:
    """One penalty's alpha curve (alpha -> experiment) in one design: the calibrated test that
    alpha matters, and the test that an interior alpha (chosen on validation prompts) beats both
    ends on the test prompts."""
    wins = values_of(table, design, "win")
    diffs = {alpha: paired_differences(wins, name, baseline) for alpha, name in curve.items()}
    trend = alpha_trend_test(diffs, level)
    interior = interior_beats_ends(diffs, split_seed=split_seed, level=level)
    return {"design": design, "alphas": "/".join(f"{a:g}" for a in sorted(curve)),
            "trend_verdict": trend["verdict"],
            **{f"slope_{k}": trend["slope"][k] for k in ("estimate", "low", "high")},
            **{f"curvature_{k}": trend["curvature"][k] for k in ("estimate", "low", "high")},
            "interior_chosen_alpha": interior["chosen_alpha"],
            "interior_vs_smallest_low": interior["vs_smallest"]["low"],
            "interior_vs_largest_low": interior["vs_largest"]["low"],
            "interior_verdict": interior["verdict"]}


def aa_checks(table: pd.DataFrame, designs: Sequence[str], pairs: Sequence[tuple[str, str]], level: float
              ) -> pd.DataFrame:
    """Every A/A pair (an experiment and its twin: the same settings, other seeds) in every design,
    through the same machinery as the claims: ``excludes_zero`` is a false positive."""
    rows = []
    for design in designs:
        wins = values_of(table, design, "win")
        for experiment, twin in pairs:
            check = aa_check(wins, experiment, twin, level)
            rows.append({"design": design, "experiment": experiment, "twin": twin,
                         **_interval_columns(check, "d_win_"), "excludes_zero": check["excludes_zero"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ one study against its rerun

STUDY_TABLES = ("comparisons", "aa", "alpha", "tuned")
STUDY_RECORD = "study.json"  # beside the tables: the study's settings, labels and provenance


def verdicts_of(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every verdict a study's tables hold, one row each: ``table, design, subject, statistic,
    estimate, low, high, verdict`` (estimate and interval where the table has them; the alpha
    tests' verdicts combine several intervals and carry none)."""
    rows = []
    for _, r in tables["comparisons"].iterrows():
        b = r["baseline"]
        for prefix, statistic in (("d_win_", f"win rate vs SFT minus {b}'s"), ("net_direct_", f"A beats {b} minus {b} beats A")):
            result = {k: r[prefix + k] for k in ("estimate", "low", "high")}
            rows.append({"table": "comparisons", "design": r["design"], "subject": r["experiment"],
                         "statistic": statistic, **result, "verdict": verdict(result, "greater")})
    for _, r in tables["aa"].iterrows():
        result = {k: r["d_win_" + k] for k in ("estimate", "low", "high")}
        rows.append({"table": "aa", "design": r["design"], "subject": r["twin"], "statistic": "DPO minus its twin",
                     **result, "verdict": "false positive" if r["excludes_zero"] else "inconclusive"})
    for _, r in tables["tuned"].iterrows():
        result = {k: r["d_win_" + k] for k in ("estimate", "low", "high")}
        # the verdict is about the candidates it chose from: another set is another verdict
        among = f" among {r['dpo_candidates']}" if "dpo_candidates" in r else ""
        rows.append({"table": "tuned", "design": r["design"], "subject": f"{r['loss']}{among}",
                     "statistic": "best alpha minus DPO's best beta (test prompts)", **result, "verdict": r["verdict"]})
    for _, r in tables["alpha"].iterrows():
        for column, statistic in (("trend_verdict", "alpha matters"), ("interior_verdict", "an interior alpha beats both ends")):
            rows.append({"table": "alpha", "design": r["design"], "subject": r["loss"], "statistic": statistic,
                         "estimate": np.nan, "low": np.nan, "high": np.nan, "verdict": r[column]})
    return pd.DataFrame(rows)


def compare_studies(first: Mapping[str, pd.DataFrame], second: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The same study run twice (on another machine, or with other float kernels), verdict by
    verdict over the verdicts both hold (one may have run more experiments, or a table may be
    missing from the other): both estimates and intervals, ``same_verdict``, and whether each run's estimate lies
    inside the other run's interval (what a 95% interval that includes every level a rerun
    redraws should do about 95% of the time, less often when the reruns' estimates are correlated
    by shared settings and prompts)."""
    key = ["table", "design", "subject", "statistic"]
    a, b = verdicts_of(first), verdicts_of(second)
    merged = a.merge(b, on=key, how="inner", suffixes=("_first", "_second"))
    if merged.empty:
        raise ValueError("the two studies share no verdict (other designs or experiments): compare runs of one study")
    merged["same_verdict"] = merged["verdict_first"] == merged["verdict_second"]
    no_interval = merged["low_first"].isna()
    for column, estimate, side in (("second_inside_first", "estimate_second", "first"),
                                   ("first_inside_second", "estimate_first", "second")):
        inside = merged[estimate].between(merged[f"low_{side}"], merged[f"high_{side}"])
        merged[column] = inside.astype("boolean").mask(no_interval)  # NA: a verdict without an interval
    return merged
