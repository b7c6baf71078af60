"""The DPPO premise on this run's data: how often y_gen is wrong, how often the trigger
fires at the start of preference training, and how often y_gen is the rejected answer.

DPPO penalizes y_gen (the SFT model's greedy answer) where the policy ranks a pair wrongly
(r < 0). The penalty can only add something to DPO where y_gen holds errors the pairs do not
already correct; if y_gen is mostly y_l, penalizing it repeats DPO. At the start of training the
policy is the SFT model, so the trigger r = log pi(y_w) - log pi(y_l) is known from the
reference cache.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dppo.settings import RewardSettings


def premise_stats(rows: pd.DataFrame, reward: RewardSettings) -> dict:
    """``rows``: training rows joined with y_gen and the reference log-probs
    (:func:`dppo.train.rows.load_training_rows`). Shares are fractions of the training rows
    (``*_of_triggered``: of the rows where the trigger fires)."""
    gen = [tuple(g) for g in rows["gen_ids"]]
    is_rejected = np.array([g == tuple(r) for g, r in zip(gen, rows["rejected_ids"])])
    is_chosen = np.array([g == tuple(c) for g, c in zip(gen, rows["chosen_ids"])])
    triggered = (rows["ref_chosen"] < rows["ref_rejected"]).to_numpy()
    stats = {
        "rows": int(len(rows)),
        "ygen_is_rejected": float(is_rejected.mean()),
        "ygen_is_chosen": float(is_chosen.mean()),
        "triggered": float(triggered.mean()),
        "ygen_is_rejected_of_triggered": float(is_rejected[triggered].mean()) if triggered.any() else float("nan"),
    }
    if reward.backend == "programmatic":  # the task's ground truth: free to evaluate
        from dppo.data.synthetic import reward as task_reward

        r_gen = np.array([task_reward(p, g) for p, g in zip(rows["prompt"], rows["gen"])])
        r_chosen = np.array([task_reward(p, c) for p, c in zip(rows["prompt"], rows["chosen"])])
        stats.update({
            "ygen_wrong": float((r_gen < 1).mean()),
            "ygen_mean_reward": float(r_gen.mean()),
            "chosen_wrong": float((r_chosen < 1).mean()),
            "ygen_at_least_chosen_of_triggered": float((r_gen >= r_chosen)[triggered].mean()) if triggered.any()
            else float("nan"),
        })
    return stats
