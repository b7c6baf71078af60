"""Step 2 of the toy model: every loss of :mod:`dppo.losses` on the preference pairs of each
scenario, from the same step-1 (reference) model, with the per-step records the figures and
tables read."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch

from dppo.losses import preference_loss
from dppo.settings import LossSettings, ToySettings
from dppo.toy.model import (
    SCENARIOS,
    UNDERFLOW_LOGP,
    PreferencePairs,
    Scenario,
    ToyPolicy,
    build_policy,
    distribution_summary,
    fit_distribution,
    greedy_responses,
    initial_distribution,
    make_preference_pairs,
    pair_logps,
)


def train_on_pairs(
    policy: ToyPolicy,
    reference_logp: torch.Tensor,
    pairs: PreferencePairs,
    y_gen: torch.Tensor,
    loss_cfg: LossSettings,
    steps: int,
    lr: float,
) -> list[dict[str, float]]:
    """Step 2: full-batch Adam on ``loss_cfg`` for ``steps`` updates, ``policy`` in place.

    Returns one record per step ``0..steps`` (the state BEFORE update ``step``; the last is the
    final model; fewer records, the last with ``diverged`` True, if the loss or a parameter
    gradient stops being finite or a probability underflows float64): the :func:`distribution_summary`, the loss and its parts, and the gradient
    magnitudes ``grad_chosen`` = mean over pairs of |dL_i/dpi(y_w|x_i)| and ``grad_rejected``
    likewise for y_l. They are the seed's Corollary-1 quantities: each pair's loss L_i is seen as
    a function of the probabilities pi(y|x_i) of its own prompt, so dL_i/dpi = dL_i/dlogpi / pi,
    where dL_i/dlogpi is taken by autograd through the loss library (total derivative: it also
    counts y_gen's term when y_gen is the same response).
    """
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    params = list(policy.parameters())
    reference = pair_logps(reference_logp.detach()[pairs.prompt], pairs, y_gen)
    rows = torch.arange(len(pairs))
    records = []
    for step in range(steps + 1):
        logp = policy()
        logp_rows = logp[pairs.prompt]  # one row per pair, so d loss / d row i is pair i's alone
        loss, parts = preference_loss(pair_logps(logp_rows, pairs, y_gen), reference, loss_cfg)
        grad_rows, *param_grads = torch.autograd.grad(loss, [logp_rows, *params])
        # The loss is the mean over pairs, so pair i's own gradient is len(pairs) times its share.
        dloss_dprob = len(pairs) * grad_rows / logp_rows.detach().exp()
        record = {"step": step, "loss_value": float(loss.detach())}
        record.update({f"part_{k}": _scalar(v) for k, v in parts.items() if k != "loss"})
        record.update(distribution_summary(logp))
        record["grad_chosen"] = float(dloss_dprob[rows, pairs.chosen].abs().mean())
        record["grad_rejected"] = float(dloss_dprob[rows, pairs.rejected].abs().mean())
        # An unbounded loss (minll's alpha f(r) logp(y_gen)) can run away; stop at the first
        # non-finite loss or parameter gradient instead of training on garbage.
        # Likewise once a probability underflows float64 (minll drives log pi(y_gen) to -inf):
        # from then on the recorded probabilities are exact zeros and the run means nothing.
        finite = (
            bool(torch.isfinite(loss))
            and all(bool(torch.isfinite(g).all()) for g in param_grads)
            and float(logp.detach().min()) > UNDERFLOW_LOGP
        )
        record["diverged"] = not finite
        records.append(record)
        if step == steps or not finite:
            break
        for parameter, grad in zip(params, param_grads):
            parameter.grad = grad
        optimizer.step()
    return records


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean())
    return float(value)


def run_scenario(scenario: Scenario, seed: int, settings: ToySettings) -> tuple[pd.DataFrame, dict]:
    """Step 1 once, then step 2 with every loss of ``settings`` from that same reference model.

    Returns the per-step records of every loss and a dict describing the step-1 model."""
    target = initial_distribution(scenario, settings.initial)
    reference = build_policy(settings.hidden, seed)
    step1_kl = fit_distribution(reference, target, settings.sft_steps, settings.sft_lr)
    with torch.no_grad():
        reference_logp = reference()
    y_gen = greedy_responses(reference_logp)
    pairs = make_preference_pairs(settings.pairs_per_prompt, seed)
    frames = []
    for label, loss_cfg in settings.losses.items():
        policy = copy.deepcopy(reference)
        records = train_on_pairs(
            policy, reference_logp, pairs, y_gen, loss_cfg, settings.steps, settings.lr
        )
        frame = pd.DataFrame.from_records(records)
        frame.insert(0, "loss", label)
        frames.append(frame)
    runs = pd.concat(frames, ignore_index=True)
    runs.insert(0, "seed", seed)
    runs.insert(0, "scenario", scenario.number)
    step1 = {
        "scenario": scenario.number,
        "seed": seed,
        "step1_kl": step1_kl,
        "y_gen": [int(y) for y in y_gen],
        **{f"step1_{k}": v for k, v in distribution_summary(reference_logp).items()},
        **{f"target_{k}": v for k, v in distribution_summary(target.log()).items()},
    }
    return runs, step1


def run_all(settings: ToySettings, scenarios: Iterable[Scenario] = SCENARIOS, progress=None):
    """Every scenario x seed x loss. Returns (per-step records, one step-1 row per scenario x seed).

    ``progress`` wraps the (scenario, seed) iterable, e.g. ``tqdm``."""
    jobs = [(scenario, seed) for scenario in scenarios for seed in settings.seeds]
    runs, step1 = [], []
    for scenario, seed in progress(jobs) if progress else jobs:
        frame, info = run_scenario(scenario, seed, settings)
        runs.append(frame)
        step1.append(info)
    return pd.concat(runs, ignore_index=True), pd.DataFrame.from_records(step1)
