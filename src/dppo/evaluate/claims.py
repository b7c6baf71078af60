"""Which runs the paper compares, and the verdicts on the poster's four claims.

Every claim is tested the same way: a paired difference between two experiments on the same
held-out prompts (per prompt, the mean over each experiment's seeds), with its bootstrap
interval (:func:`dppo.evaluate.winrate.difference`) and its minimum detectable difference (MDE). A
claim that one method beats another HOLDS when the interval lies above zero, is REFUTED when
it lies below zero, and is INCONCLUSIVE when it contains zero. The experiments each claim is
tested on are named in the config (``claims``), before the results are seen; the one choice
made after them (the best alpha of a sweep, the best run the chained one is compared with) is
stated with the claim.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from dppo.evaluate.winrate import difference
from dppo.settings import LOSS_KINDS, PENALTY_SWEEP_GROUPS, ClaimsSettings, WinRateSettings, penalized_losses

log = logging.getLogger(__name__)

HOLDS, REFUTED, INCONCLUSIVE, NOT_TESTED = "holds", "refuted", "inconclusive", "not tested"
CLAIM_COLUMNS = ("claim", "statement", "test", "a", "b", "metric", "diff", "low", "high", "mde", "level", "verdict",
                 "n_seeds_a", "n_seeds_b", "note")
STATEMENTS = {
    "alpha": "The choice of the penalty strength alpha is essential.",
    "negative": "Negative rewards decrease compared with DPO.",
    "efficiency": "Unlikelihood on the small subset beats DPO on every row.",
    "chained": "Unlikelihood on every row, then DPO on the subset, has the highest win rate.",
}


def label_with_alpha(row) -> str:
    """Label plus alpha for penalty losses, since one label (loss, f) may run at several alphas."""
    if row.get("loss") in penalized_losses() and pd.notna(row.get("alpha")):
        return f"{row['label']}, α={row['alpha']:g}"
    return str(row["label"])


def best_penalty(win_rates: pd.DataFrame):
    """The penalty variant (groups PENALTY_SWEEP_GROUPS) with the highest win rate, or None."""
    penal = penalty_sweep_runs(win_rates)
    return None if penal.empty else penal.loc[penal["win_rate"].idxmax()]


def penalty_sweep_runs(win_rates: pd.DataFrame) -> pd.DataFrame:
    """The penalized runs of the groups that form the alpha sweep."""
    return win_rates[win_rates["group"].isin(PENALTY_SWEEP_GROUPS) & win_rates["loss"].isin(penalized_losses())]


def pick_runs(win_rates: pd.DataFrame, baseline: str, dppo: str | None) -> dict[str, dict]:
    """The runs the reward histogram and the dynamics compare: ``dpo`` (the baseline) and
    ``dppo`` (the config's pre-registered penalty variant, else the best one). Each value is
    ``{"name", "label"}``; a key is absent when the grid has no such run."""
    picked: dict[str, dict] = {}
    by_name = win_rates.set_index("name", drop=False)
    if baseline in by_name.index:
        picked["dpo"] = {"name": baseline, "label": str(by_name.loc[baseline, "label"])}
    row = by_name.loc[dppo] if dppo in by_name.index else best_penalty(win_rates)
    if row is not None:
        picked["dppo"] = {"name": row["name"], "label": label_with_alpha(row)}
    return picked


def picked_files(win_rates: pd.DataFrame, paths, baseline: str, dppo: str | None) -> dict[str, str]:
    """Display title -> the file among ``paths`` (one per run, named ``<run>.<ext>``) of each run
    :func:`pick_runs` picks. A run the grid lacks is left out."""
    files = {Path(p).stem: str(p) for p in paths}
    picked = {}
    for key, run in pick_runs(win_rates, baseline, dppo).items():
        if run["name"] in files:
            picked["DPO" if key == "dpo" else run["label"]] = files[run["name"]]
            log.info("%s: run %s", key, run["name"])
    return picked


def data_efficiency_rows(win_rates: pd.DataFrame, n_full: int | None = None) -> pd.DataFrame:
    """Win rate per method and training-set size.

    The data-efficiency group holds the runs on subsets; a method's run on all rows is the
    main-group run of the same loss (and f, alpha for penalties), whose ``n_train`` is empty
    and reads as ``n_full`` (the preference rows kept). Columns: ``method`` (loss, and f for
    penalties), ``label``, ``loss``, ``n_train``, ``win_rate``, ``win_rate_low``, ``win_rate_high``."""
    cols = ["method", "label", "loss", "n_train", "win_rate", "win_rate_low", "win_rate_high"]
    eff = win_rates[win_rates["group"] == "data_efficiency"]
    if eff.empty:
        return pd.DataFrame(columns=cols)
    main = win_rates[win_rates["group"] == "main"]
    parts = [eff.assign(method=eff.apply(_method_key, axis=1))]
    for _, run in eff.drop_duplicates(["loss", "f", "alpha"]).iterrows():
        keys = ("loss", "f", "alpha") if run["loss"] in penalized_losses() else ("loss",)
        full = main
        for key in keys:
            full = full[full[key] == run[key]]
        full = full[full["n_train"].isna()]
        if len(full):
            parts.append(full.iloc[:1].assign(method=_method_key(run)))
    rows = pd.concat(parts, ignore_index=True)
    rows["n_train"] = pd.to_numeric(rows["n_train"], errors="coerce").astype(float)
    if n_full is not None:
        rows["n_train"] = rows["n_train"].fillna(n_full)
    rows = rows.dropna(subset=["n_train"])
    # The full-data run's label ("DPO") names the method better than a subset's.
    names = {m: grp.sort_values("group", key=lambda g: g != "main")["label"].iloc[0]
             for m, grp in rows.groupby("method", sort=False)}
    rows["label"] = rows["method"].map(names)
    return rows[cols].sort_values(["method", "n_train"], kind="stable").reset_index(drop=True)


def _method_key(row) -> str:
    return LOSS_KINDS[row["loss"]].label(row["f"])


# ----------------------------------------------------------------------------- verdicts


def better_verdict(low: float, high: float) -> str:
    """"a beats b": holds above zero, refuted below zero, inconclusive across it."""
    return HOLDS if low > 0 else REFUTED if high < 0 else INCONCLUSIVE


def _seeds(win_rates: pd.DataFrame, name: str) -> int:
    return int(win_rates.set_index("name").loc[name, "n_seeds"])


def _claim(key, test, a, b, metric, result, verdict, level, win_rates, note="") -> dict:
    return {"claim": key, "statement": STATEMENTS[key], "test": test, "a": a, "b": b, "metric": metric,
            "diff": result["diff"], "low": result["low"], "high": result["high"], "mde": result["mde"],
            "level": level, "verdict": verdict, "n_seeds_a": _seeds(win_rates, a), "n_seeds_b": _seeds(win_rates, b),
            "note": note}


def _not_tested(key, why: str) -> dict:
    return {**{c: None for c in CLAIM_COLUMNS}, "claim": key, "statement": STATEMENTS[key], "test": why,
            "verdict": NOT_TESTED}


def alpha_claim(win_rates: pd.DataFrame, prompts: pd.DataFrame, claims: ClaimsSettings,
                settings: WinRateSettings) -> dict:
    """Per penalty loss with an alpha sweep (same f and unlikelihood form, at least two alphas):
    the paired difference in win rate between its best and its worst alpha, at a Bonferroni
    level over the losses. Holds when one interval lies above zero; refuted when every interval
    lies within +-margin (no difference that matters); inconclusive otherwise."""
    sweep = penalty_sweep_runs(win_rates)
    lines = [g for _, g in sweep.groupby(["loss", "f", "unll_level"], dropna=False) if g["alpha"].nunique() >= 2]
    if not lines:
        return _not_tested("alpha", "no penalty loss is run at two or more alphas")
    level = 1 - (1 - settings.level) / len(lines)  # Bonferroni over the lines tested
    adjusted = WinRateSettings(**{**settings.to_dict(), "level": level})
    results = []
    for line in lines:
        best = line.loc[line["win_rate"].idxmax()]
        rest = line[line["name"] != best["name"]]
        worst = rest.loc[rest["win_rate"].idxmin()]
        results.append((best, worst, difference(prompts, best["name"], worst["name"], "win", adjusted)))
    best, worst, result = max(results, key=lambda item: item[2]["low"])
    if result["low"] > 0:
        verdict = HOLDS
    elif all(-claims.margin < r["low"] and r["high"] < claims.margin for _, _, r in results):
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    test = (f"best minus worst alpha of each penalty loss's sweep, paired difference in win rate against SFT, "
            f"{100 * level:.1f}% intervals (Bonferroni over {len(lines)} losses); holds if one lies above 0, refuted "
            f"if all lie within +-{claims.margin:g}")
    note = "; ".join(f"{b['loss']} ({b['f']}): alpha {b['alpha']:g} vs {w['alpha']:g} {r['diff']:+.3f} "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}]" for b, w, r in results)
    return _claim("alpha", test, best["name"], worst["name"], "win", result, verdict, level, win_rates, note)


def test_claims(win_rates: pd.DataFrame, prompts: pd.DataFrame, claims: ClaimsSettings,
                settings: WinRateSettings) -> pd.DataFrame:
    """One row per claim (:data:`CLAIM_COLUMNS`): the test, its numbers and its verdict."""
    names = set(win_rates["name"])
    baseline = settings.baseline
    rows = [alpha_claim(win_rates, prompts, claims, settings)]

    if claims.dppo in names and baseline in names:
        result = difference(prompts, claims.dppo, baseline, "negative", settings)
        verdict = better_verdict(-result["high"], -result["low"])  # fewer negatives is better
        test = ("paired difference in the share of negative rewards (penalty variant minus DPO); holds if the "
                "interval lies below 0, refuted if above 0")
        rows.append(_claim("negative", test, claims.dppo, baseline, "negative", result, verdict, settings.level,
                           win_rates))
    else:
        rows.append(_not_tested("negative", "claims.dppo names no experiment"))

    def beats(claim: str, a: str, b: str, which: str) -> dict:
        """``a`` has a higher win rate against SFT than ``b`` (``which`` says what each is)."""
        result = difference(prompts, a, b, "win", settings)
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
        best_other = others.loc[others["win_rate"].idxmax(), "name"]
        rows.append(beats("chained", claims.chained, best_other,
                          "chained run minus the best other run of the grid, picked by win rate"))
    else:
        rows.append(_not_tested("chained", "claims.chained names no experiment"))
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
