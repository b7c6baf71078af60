"""Which runs a figure shows: the penalty variants of the alpha sweep, the runs the reward
histogram and the dynamics compare (the baseline and the pre-registered or best penalty variant),
and the rows of the data-efficiency figure. The claims' verdicts (:mod:`dppo.evaluate.claims`)
test on the same alpha sweep."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from dppo.settings import LOSS_KINDS, PENALTY_SWEEP_GROUPS, penalized_losses

log = logging.getLogger(__name__)


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
    penalties), ``label``, ``name`` (the run), ``loss``, ``n_train``, ``win_rate``, ``win_rate_low``,
    ``win_rate_high``."""
    cols = ["method", "label", "name", "loss", "n_train", "win_rate", "win_rate_low", "win_rate_high"]
    eff = win_rates[win_rates["group"] == "data_efficiency"]
    if eff.empty:
        return pd.DataFrame(columns=cols)
    main = win_rates[win_rates["group"] == "main"]
    parts = [eff.assign(method=eff.apply(method_key, axis=1))]
    for _, run in eff.drop_duplicates(["loss", "f", "alpha"]).iterrows():
        keys = ("loss", "f", "alpha") if run["loss"] in penalized_losses() else ("loss",)
        full = main
        for key in keys:
            full = full[full[key] == run[key]]
        full = full[full["n_train"].isna()]
        if len(full):
            parts.append(full.iloc[:1].assign(method=method_key(run)))
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


def method_key(row) -> str:
    """A run's method: its loss's label, with f for penalties (a method may run at several alphas)."""
    return LOSS_KINDS[row["loss"]].label(row["f"])
