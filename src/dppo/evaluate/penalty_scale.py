"""How hard each DPPO penalty pushes against DPO: the ratio of the penalty's gradient weight
per y_gen token to the DPO term's per y_w token (:func:`dppo.train.losses.gradient_weights`), read
from the per-step training metrics.

Over the first epoch the policy is still close to the SFT model and every row has been seen
once, so that ratio describes the loss as configured (alpha, f, the unlikelihood form) before
training moves it; alpha is read against it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from dppo.settings import LOSS_KINDS, WEIGHTING_KINDS, penalized_losses

COLUMNS = ("name", "loss", "f", "alpha", "unll_level", "ratio_first", "ratio_first_fired", "ratio_mean",
           "fired_first", "n_seeds")


def _ratio(steps: pd.DataFrame, penalty: str, dpo: str) -> float:
    """Ratio of the mean weights over ``steps`` (per seed, then the mean over seeds)."""
    per_seed = steps.groupby("seed")[[penalty, dpo]].mean()
    return float((per_seed[penalty] / per_seed[dpo].where(per_seed[dpo] > 0)).mean())


def penalty_scale(experiments: list[dict], metrics: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per penalized experiment: the ratio of the penalty's to the DPO term's gradient
    weight over the first epoch (all rows, and the rows where the penalty fires) and over all of
    training, and the share of rows where the penalty fires in the first epoch; each the mean
    over the experiment's seeds."""
    rows = []
    for experiment in experiments:
        name = experiment["name"]
        if experiment["loss"] not in penalized_losses() or name not in metrics:
            continue
        m = metrics[name]
        if "grad_weight_dpo" not in m:
            continue
        first = m[m["epoch"] <= 1 + 1e-9]
        fired = first[first["grad_weight_dpo_fired"] > 0]  # steps where the penalty fired on some row
        rows.append({
            "name": name, "loss": experiment["loss"], "f": experiment["f"], "alpha": experiment["alpha"],
            "unll_level": experiment["unll_level"] if LOSS_KINDS[experiment["loss"]].token_levels else None,
            "ratio_first": _ratio(first, "grad_weight_penalty", "grad_weight_dpo"),
            "ratio_first_fired": _ratio(fired, "grad_weight_penalty_fired", "grad_weight_dpo_fired") if len(fired)
            else float("nan"),
            "ratio_mean": _ratio(m, "grad_weight_penalty", "grad_weight_dpo"),
            # an f non-zero for r > 0 weighs every row
            "fired_first": 1.0 if WEIGHTING_KINDS[experiment["f"]].fires_on_positive_r
            else float(first["frac_r_neg"].mean()),
            "n_seeds": int(m["seed"].nunique()),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.replace([np.inf, -np.inf], np.nan)
