"""Which runs the paper compares, and the verdicts on the poster's claims, from the
win-rate table (:mod:`dppo.results`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from dppo.latex import NA
from dppo.settings import PENALIZED_LOSSES as PENALTY_LOSSES

log = logging.getLogger(__name__)

SEED_KEYS = ("label", "group", "loss", "f", "alpha", "n_train")


def aggregate_seeds(win_rates: pd.DataFrame, keys=SEED_KEYS) -> pd.DataFrame:
    """Mean over seeds of the win rate, its bootstrap interval bounds and the negative share.

    With one seed this is the run's own 95% bootstrap interval over prompts; with several,
    the seed-averaged interval (the table keeps per-seed rows for anything finer).
    """
    keys = [k for k in keys if k in win_rates.columns]
    values = [c for c in ("win_rate", "ci_low", "ci_high", "frac_negative") if c in win_rates]
    if win_rates.empty:
        return pd.DataFrame(columns=[*keys, *values, "n_seeds"])
    grouped = win_rates.groupby(keys, dropna=False, sort=False)
    agg = grouped[values].mean()
    agg["n_seeds"] = grouped.size()
    return agg.reset_index()


def label_with_alpha(row) -> str:
    """Label plus alpha for penalty losses, since one label (loss, f) may run at several alphas."""
    if row.get("loss") in PENALTY_LOSSES and pd.notna(row.get("alpha")):
        return f"{row['label']}, α={row['alpha']:g}"
    return str(row["label"])


def best_penalty(win_rates: pd.DataFrame):
    """Seed-averaged row of the penalty variant (groups main, alpha_sweep) with the highest
    win rate, or None. Ties keep the first in table order."""
    penal = win_rates[win_rates["group"].isin(["main", "alpha_sweep"])
                      & win_rates["loss"].isin(PENALTY_LOSSES)]
    if penal.empty:
        return None
    agg = aggregate_seeds(penal, ("label", "loss", "f", "alpha", "n_train"))
    return agg.loc[agg["win_rate"].idxmax()]


def _matching(df: pd.DataFrame, row, keys) -> pd.DataFrame:
    for key in keys:
        df = df[(df[key] == row[key]) | (df[key].isna() & pd.isna(row[key]))]
    return df


def pick_runs(win_rates: pd.DataFrame) -> dict[str, dict]:
    """The runs the reward histogram and the dynamics compare.

    ``dpo``: the main-group DPO run with the most training rows; ``dppo``: the best penalty
    variant (:func:`best_penalty`). Each value is ``{"name", "label", "win_rate"}`` of its
    lowest seed; a key is absent when the grid has no such run.
    """
    picked: dict[str, dict] = {}
    if win_rates.empty:
        return picked
    main_dpo = win_rates[(win_rates["group"] == "main") & (win_rates["loss"] == "dpo")]
    if not main_dpo.empty:
        row = main_dpo.sort_values(["n_train", "seed"], ascending=[False, True],
                                   na_position="first").iloc[0]  # NaN n_train = all rows
        picked["dpo"] = {"name": row["name"], "label": row["label"],
                         "win_rate": float(row["win_rate"])}
    best = best_penalty(win_rates)
    if best is not None:
        same = _matching(win_rates[win_rates["group"].isin(["main", "alpha_sweep"])], best,
                         ("label", "loss", "f", "alpha", "n_train"))
        row = same.sort_values("seed").iloc[0]
        picked["dppo"] = {"name": row["name"], "label": label_with_alpha(row),
                          "win_rate": float(best["win_rate"])}
    return picked


def picked_files(win_rates: pd.DataFrame, paths) -> dict[str, str]:
    """Display title -> the file among ``paths`` (one per run, named ``<run>.<ext>``) of each run
    :func:`pick_runs` picks: "DPO" and the best penalty variant's label. A run the grid lacks
    is left out."""
    files = {Path(p).stem: str(p) for p in paths}
    runs = pick_runs(win_rates)
    picked = {}
    for key, title in (("dpo", "DPO"), ("dppo", None)):
        if key in runs and runs[key]["name"] in files:
            picked[title or runs[key]["label"]] = files[runs[key]["name"]]
            log.info("%s: run %s", key, runs[key]["name"])
        else:
            log.info("%s: no run in this grid, left out", key)
    return picked


def data_efficiency_rows(win_rates: pd.DataFrame, n_full: int | None = None) -> pd.DataFrame:
    """Win rate per method and training-set size, seed-averaged.

    The data-efficiency group holds the runs on subsets; a method's run on all rows is the
    main-group run of the same loss (and f, alpha for penalties), whose ``n_train`` is
    empty and reads as ``n_full`` (the preference rows kept). Columns: ``method`` (loss,
    and f for penalties), ``label``, ``loss``, ``n_train``, ``win_rate``, ``ci_low``, ``ci_high``.
    """
    cols = ["method", "label", "loss", "n_train", "win_rate", "ci_low", "ci_high"]
    eff = win_rates[win_rates["group"] == "data_efficiency"]
    if eff.empty:
        return pd.DataFrame(columns=cols)
    main = win_rates[win_rates["group"] == "main"]
    parts = [eff.assign(method=eff.apply(_method_key, axis=1))]
    for _, run in eff.drop_duplicates(["loss", "f", "alpha"]).iterrows():
        keys = ("loss", "f", "alpha") if run["loss"] in PENALTY_LOSSES else ("loss",)
        full = _matching(main, run, keys)
        if len(full):
            parts.append(full.assign(method=_method_key(run)))
    rows = pd.concat(parts, ignore_index=True)
    rows["n_train"] = pd.to_numeric(rows["n_train"], errors="coerce").fillna(
        float("nan") if n_full is None else n_full)
    rows = rows.dropna(subset=["n_train"])
    # The full-data run's label ("DPO") names the method better than a subset's.
    names = {m: grp.sort_values("group", key=lambda g: g != "main")["label"].iloc[0]
             for m, grp in rows.groupby("method", sort=False)}
    agg = aggregate_seeds(rows, ("method", "loss", "n_train"))
    agg["label"] = agg["method"].map(names)
    return agg[cols].sort_values(["method", "n_train"], kind="stable").reset_index(drop=True)


def _method_key(row) -> str:
    return f"{row['loss']} ({row['f']})" if row["loss"] in PENALTY_LOSSES else str(row["loss"])


def claim_verdicts(win_rates: pd.DataFrame, n_full: int | None = None) -> dict[str, dict]:
    """Test the poster's discussion claims on this run's win-rate table.

    ``n_full``: the number of preference rows a run without ``n_train`` trains on.

    Returns one entry per claim (``alpha``, ``negative``, ``efficiency``, ``chained``) with
    ``verdict`` in {"holds", "does not hold", "cannot be tested"} and the numbers used.
    The criteria are stated with each entry so the paper can print them.
    """
    out: dict[str, dict] = {}
    wr = win_rates

    # 1. The choice of alpha matters: across the alpha sweep of the best (loss, f), the
    #    best and worst alpha have non-overlapping 95% intervals.
    sweep = aggregate_seeds(wr[wr["group"].isin(["alpha_sweep", "main"]) & wr["loss"].isin(PENALTY_LOSSES)],
                       ("loss", "f", "alpha"))
    counts = sweep.groupby(["loss", "f"], dropna=False)["alpha"].transform("nunique") if len(sweep) else []
    sweep = sweep[pd.Series(counts, index=sweep.index) >= 2] if len(sweep) else sweep
    if sweep.empty:
        out["alpha"] = {"verdict": "cannot be tested", "spread": math.nan, "loss": NA, "f": NA}
    else:
        best = sweep.loc[sweep["win_rate"].idxmax()]
        line = sweep[(sweep["loss"] == best["loss"]) & (sweep["f"] == best["f"])]
        worst = line.loc[line["win_rate"].idxmin()]
        holds = best["ci_low"] > worst["ci_high"]
        out["alpha"] = {"verdict": "holds" if holds else "does not hold",
                        "spread": best["win_rate"] - worst["win_rate"],
                        "best_alpha": best["alpha"], "worst_alpha": worst["alpha"],
                        "loss": best["loss"], "f": best["f"]}

    # 2. Negative rewards drop compared to DPO: the best penalty variant has a smaller
    #    share of negative rewards than main DPO.
    dpo = aggregate_seeds(wr[(wr["group"] == "main") & (wr["loss"] == "dpo")], ("loss",))
    best = best_penalty(wr)
    if dpo.empty or best is None:
        out["negative"] = {"verdict": "cannot be tested", "dpo": math.nan, "best": math.nan}
    else:
        d, b = dpo["frac_negative"].iloc[0], best["frac_negative"]
        out["negative"] = {"verdict": "holds" if b < d else "does not hold", "dpo": d, "best": b,
                           "label": label_with_alpha(best)}

    # 3. Unlikelihood on the fewest rows beats DPO on the most rows (poster: 8k vs 60k).
    eff = data_efficiency_rows(wr, n_full)
    unll, dpo_eff = eff[eff["loss"] == "unll"], eff[eff["loss"] == "dpo"]
    if unll.empty or dpo_eff.empty:
        out["efficiency"] = {"verdict": "cannot be tested", "unll": math.nan, "dpo": math.nan,
                             "unll_n": NA, "dpo_n": NA}
    else:
        u = unll.loc[unll["n_train"].idxmin()]
        d = dpo_eff.loc[dpo_eff["n_train"].idxmax()]
        out["efficiency"] = {"verdict": "holds" if u["win_rate"] > d["win_rate"] else "does not hold",
                             "unll": u["win_rate"], "dpo": d["win_rate"],
                             "unll_n": int(u["n_train"]), "dpo_n": int(d["n_train"])}

    # 4. The chained run (unlikelihood, then DPO) has the highest win rate of all runs.
    everything = aggregate_seeds(wr, ("label", "group", "loss", "f", "alpha", "n_train"))
    chained = everything[everything["group"] == "chained"]
    if chained.empty:
        out["chained"] = {"verdict": "cannot be tested", "chained": math.nan, "best_other": math.nan}
    else:
        c = chained["win_rate"].max()
        others = everything[everything["group"] != "chained"]["win_rate"]
        best_other = others.max() if len(others) else math.nan
        holds = len(others) == 0 or c > best_other
        out["chained"] = {"verdict": "holds" if holds else "does not hold", "chained": c,
                          "best_other": best_other,
                          "label": str(chained.loc[chained["win_rate"].idxmax(), "label"])}
    return out
