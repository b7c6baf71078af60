"""How hard each DPPO penalty pushes against DPO: the ratio of the penalty's gradient weight
per y_gen token to the DPO term's per y_w token (:func:`dppo.losses.gradient_weights`), read
from the per-step training metrics.

At the first step the policy is the SFT model, so that ratio describes the loss as configured
(alpha, f, the unlikelihood form) before training moves it; alpha is read against it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from dppo.settings import PENALIZED_LOSSES

COLUMNS = ("name", "loss", "f", "alpha", "unll_level", "ratio_first", "ratio_first_fired", "ratio_mean",
           "fired_first", "n_seeds")


def _ratio(metrics: pd.DataFrame, penalty: str, dpo: str) -> pd.Series:
    return metrics[penalty] / metrics[dpo].where(metrics[dpo] > 0)


def penalty_scale(experiments: list[dict], metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per penalized experiment: the gradient-weight ratio at the first step (all rows,
    and the rows where the penalty fires), its mean over training, and the share of rows where
    the penalty fires at the first step; each a mean over the experiment's seeds."""
    rows = []
    for experiment in experiments:
        name = experiment["name"]
        if experiment["loss"] not in PENALIZED_LOSSES or name not in metrics:
            continue
        m = metrics[name]
        if "grad_weight_dpo" not in m:
            continue
        m = m.assign(ratio=_ratio(m, "grad_weight_penalty", "grad_weight_dpo"),
                     ratio_fired=_ratio(m, "grad_weight_penalty_fired", "grad_weight_dpo_fired"))
        first = m[m["step"] == m["step"].min()]
        rows.append({
            "name": name, "loss": experiment["loss"], "f": experiment["f"], "alpha": experiment["alpha"],
            "unll_level": experiment["unll_level"] if experiment["loss"] == "unll" else None,
            "ratio_first": float(first["ratio"].mean()),
            "ratio_first_fired": float(first["ratio_fired"].mean()),
            "ratio_mean": float(m.groupby("seed")["ratio"].mean().mean()),
            "fired_first": float(first["frac_r_neg"].mean()) if experiment["f"] != "expectile" else 1.0,
            "n_seeds": int(m["seed"].nunique()),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.replace([np.inf, -np.inf], np.nan)
