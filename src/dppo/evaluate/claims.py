"""The verdicts on the poster's four claims, on one run of the pipeline.

Every claim is tested the same way: a paired difference between two experiments on the same
held-out prompts, with its interval and its minimum detectable difference (MDE). Where the two
experiments share at least two training seeds (the same seed is the same data order), the
interval is over those seeds (:func:`dppo.evaluate.replicates.replicated_interval`: Student's t
over the seed means of the paired differences, S - 1 df), so it includes the seed's variance;
otherwise it is the bootstrap over prompts of the seed means (:func:`dppo.evaluate.winrate.difference`),
conditional on the seeds too. Either way it is conditional on the run's world (its data draw,
SFT model, y_gen) and on the machine: ``over`` and ``conditional_on`` say which. The study
(:mod:`dppo.evaluate.study`) replicates the worlds. A claim that one method beats another HOLDS
when the interval lies above zero, is REFUTED when it lies below zero, and is INCONCLUSIVE when
it contains zero. The experiments each claim is tested on are named in the config (``claims``),
before the results are seen; the choices made after them (the best and the worst alpha of a
sweep, the best run the chained one is compared with) are made on a validation half of the
held-out prompts and judged on the other half (``claims.split_seed``), so that picking the
largest of several differences does not make it look larger than it is; they are stated with
the claim.
"""

from __future__ import annotations

import pandas as pd

from dppo.evaluate.replicates import paired_differences, replicated_interval, split_prompts
from dppo.evaluate.run_selection import penalty_sweep_runs
from dppo.evaluate.winrate import difference, per_prompt
from dppo.settings import ClaimsSettings, WinRateSettings

HOLDS, REFUTED, INCONCLUSIVE, NOT_TESTED = "holds", "refuted", "inconclusive", "not tested"
CLAIM_COLUMNS = ("claim", "statement", "test", "a", "b", "metric", "diff", "low", "high", "mde", "level", "verdict",
                 "over", "df", "conditional_on", "n_seeds_a", "n_seeds_b", "note")
STATEMENTS = {
    "alpha": "The choice of the penalty strength alpha is essential.",
    "negative": "Negative rewards decrease compared with DPO.",
    "efficiency": "Unlikelihood on the small subset beats DPO on every row.",
    "chained": "Unlikelihood on every row, then DPO on the subset, has the highest win rate.",
}


def paired_difference(scores: pd.DataFrame, a: str, b: str, metric: str, settings: WinRateSettings) -> dict:
    """``a`` minus ``b`` in one per-(seed, prompt) metric of ``scores`` (the per-seed table of
    :func:`dppo.evaluate.winrate.per_seed_scores`): over their common seeds when they share at
    least two, else over prompts (seed means); ``diff, low, high, mde, over, df,
    conditional_on``."""
    seeds = [set(scores.loc[scores["name"] == name, "seed"]) for name in (a, b)]
    common = sorted(seeds[0] & seeds[1])
    if len(common) >= 2:
        rows = scores[scores["name"].isin([a, b]) & scores["seed"].isin(common)]
        values = pd.DataFrame({"world": 0, "experiment": rows["name"], "seed": rows["seed"],
                               "prompt_id": rows["prompt_id"], "value": rows[metric].to_numpy(float)})
        result = replicated_interval(paired_differences(values, a, b), settings.level)
        return {"diff": result["estimate"], "low": result["low"], "high": result["high"], "mde": result["mde"],
                "over": f"{len(common)} common seeds", "df": result["df"],
                "conditional_on": "+".join(result["conditional_on"])}
    result = difference(per_prompt(scores), a, b, metric, settings)
    return {**result, "over": f"{result['n_prompts']} prompts (bootstrap)", "df": None,
            "conditional_on": "world+seeds+machine"}


def better_verdict(low: float, high: float) -> str:
    """"a beats b": holds above zero, refuted below zero, inconclusive across it."""
    return HOLDS if low > 0 else REFUTED if high < 0 else INCONCLUSIVE


def _seeds(win_rates: pd.DataFrame, name: str) -> int:
    return int(win_rates.set_index("name").loc[name, "n_seeds"])


def _claim(key, test, a, b, metric, result, verdict, level, win_rates, note="") -> dict:
    return {"claim": key, "statement": STATEMENTS[key], "test": test, "a": a, "b": b, "metric": metric,
            "diff": result["diff"], "low": result["low"], "high": result["high"], "mde": result["mde"],
            "level": level, "verdict": verdict, "over": result["over"], "df": result["df"],
            "conditional_on": result["conditional_on"], "n_seeds_a": _seeds(win_rates, a), "n_seeds_b": _seeds(win_rates, b),
            "note": note}


def _not_tested(key, why: str) -> dict:
    return {**{c: None for c in CLAIM_COLUMNS}, "claim": key, "statement": STATEMENTS[key], "test": why,
            "verdict": NOT_TESTED}


def split_scores(scores: pd.DataFrame, split_seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``scores`` on the validation and on the test half of its prompts (disjoint, together all;
    :func:`dppo.evaluate.replicates.split_prompts`)."""
    validation, test = split_prompts(scores["prompt_id"].unique(), split_seed)
    return scores[scores["prompt_id"].isin(validation)], scores[scores["prompt_id"].isin(test)]


def _win_rates(scores: pd.DataFrame, names) -> pd.Series:
    """Win rate against SFT of each of ``names`` on ``scores``' prompts (mean over seeds and prompts)."""
    return scores[scores["name"].isin(list(names))].groupby("name")["win"].mean()


def _prompts(scores: pd.DataFrame) -> int:
    return scores["prompt_id"].nunique()


def alpha_claim(win_rates: pd.DataFrame, scores: pd.DataFrame, claims: ClaimsSettings,
                settings: WinRateSettings) -> dict:
    """Per penalty loss with an alpha sweep (same f and unlikelihood form, at least two alphas):
    its best and its worst alpha by win rate on the validation prompts, and their paired
    difference on the test prompts, at a Bonferroni level over the losses: with no effect of
    alpha that difference is centred on zero, so the verdict's error rate is the stated one.
    Holds when one interval lies above zero; refuted when every interval lies within +-margin
    (no difference that matters); inconclusive otherwise."""
    sweep = penalty_sweep_runs(win_rates)
    lines = [g for _, g in sweep.groupby(["loss", "f", "unll_level"], dropna=False) if g["alpha"].nunique() >= 2]
    if not lines:
        return _not_tested("alpha", "no penalty loss is run at two or more alphas")
    level = 1 - (1 - settings.level) / len(lines)  # Bonferroni over the lines tested
    adjusted = WinRateSettings(**{**settings.to_dict(), "level": level})
    validation, test = split_scores(scores, claims.split_seed)
    results = []
    for line in lines:
        chosen = _win_rates(validation, line["name"]).sort_values(kind="stable")
        by_name = line.set_index("name")
        best, worst = by_name.loc[chosen.index[-1]], by_name.loc[chosen.index[0]]
        results.append((best, worst, paired_difference(test, best.name, worst.name, "win", adjusted)))
    best, worst, result = max(results, key=lambda item: item[2]["low"])
    if result["low"] > 0:
        verdict = HOLDS
    elif all(-claims.margin < r["low"] and r["high"] < claims.margin for _, _, r in results):
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    test = (f"best minus worst alpha of each penalty loss's sweep, chosen on {_prompts(validation)} validation "
            f"prompts, paired difference in win rate against SFT on the {_prompts(test)} test prompts, "
            f"{100 * level:.1f}% intervals (Bonferroni over {len(lines)} losses); holds if one lies above 0, refuted "
            f"if all lie within +-{claims.margin:g}")
    note = "; ".join(f"{b['loss']} ({b['f']}): alpha {b['alpha']:g} vs {w['alpha']:g} {r['diff']:+.3f} "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}]" for b, w, r in results)
    return _claim("alpha", test, best.name, worst.name, "win", result, verdict, level, win_rates, note)


def test_claims(win_rates: pd.DataFrame, scores: pd.DataFrame, claims: ClaimsSettings,
                settings: WinRateSettings) -> pd.DataFrame:
    """One row per claim (:data:`CLAIM_COLUMNS`): the test, its numbers and its verdict;
    ``scores``: every model's per-(seed, prompt) values (``results/tables/prompt_scores.parquet``)."""
    names = set(win_rates["name"])
    baseline = settings.baseline
    rows = [alpha_claim(win_rates, scores, claims, settings)]

    if claims.dppo in names and baseline in names:
        result = paired_difference(scores, claims.dppo, baseline, "negative", settings)
        verdict = better_verdict(-result["high"], -result["low"])  # fewer negatives is better
        test = ("paired difference in the share of negative rewards (penalty variant minus DPO); holds if the "
                "interval lies below 0, refuted if above 0")
        rows.append(_claim("negative", test, claims.dppo, baseline, "negative", result, verdict, settings.level,
                           win_rates))
    else:
        rows.append(_not_tested("negative", "claims.dppo names no experiment"))

    def beats(claim: str, a: str, b: str, which: str) -> dict:
        """``a`` has a higher win rate against SFT than ``b`` (``which`` says what each is)."""
        result = paired_difference(scores, a, b, "win", settings)
        test = f"paired difference in win rate against SFT ({which}); holds if the interval lies above 0, refuted if below 0"
        return _claim(claim, test, a, b, "win", result, better_verdict(result["low"], result["high"]), settings.level,
                      win_rates)

    if claims.small_subset in names and baseline in names:
        rows.append(beats("efficiency", claims.small_subset, baseline,
                          "unlikelihood on the subset minus DPO on every row"))
    else:
        rows.append(_not_tested("efficiency", "claims.small_subset names no experiment"))

    others = win_rates[win_rates["name"] != claims.chained]
    if claims.chained in names and len(others):
        validation, test = split_scores(scores, claims.split_seed)
        best_other = _win_rates(validation, others["name"]).idxmax()
        result = paired_difference(test, claims.chained, best_other, "win", settings)
        rows.append(_claim("chained", f"paired difference in win rate against SFT on the {_prompts(test)} test prompts, "
                           f"chained run minus the best other run of the grid by win rate on the {_prompts(validation)} "
                           "validation prompts; holds if the interval lies above 0, refuted if below 0",
                           claims.chained, best_other, "win", result, better_verdict(result["low"], result["high"]),
                           settings.level, win_rates))
    else:
        rows.append(_not_tested("chained", "claims.chained names no experiment"))
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
