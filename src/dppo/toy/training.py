"""Training of the toy model: step 1 of every (scenario, seed), then step 2, every loss of
:mod:`dppo.train.losses` on the preference pairs of each scenario from that same step-1 (reference)
model, with the per-step records the figures and tables read.

Everything is ONE batched computation: the (scenario, seed) step-1 fits are the runs of one
:class:`~dppo.toy.model.StackedPolicy`, and so are the (scenario, seed, loss) step-2 runs. Each
run's numbers depend on its own parameters only and each run's objective enters the summed
objective once, so every run gets exactly its own gradient; Adam is elementwise, so one Adam
over the stack is one Adam per run. A tiny MLP per run would leave the CPU idle between
Python calls; a stack of them keeps it busy.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from dppo.settings import LossSettings, ToySettings
from dppo.toy.model import (
    CHOSEN_IDS,
    REJECTED_IDS,
    SCENARIOS,
    UNDERFLOW_LOGP,
    UNSEEN_IDS,
    PreferencePairs,
    Scenario,
    StackedPolicy,
    build_policy,
    distribution_summary,
    fit_distribution,
    greedy_responses,
    initial_distribution,
    make_preference_pairs,
    pair_logps,
)
from dppo.train.losses import LossTerms, ResponseLogps, get_loss, gradient_weights, loss_terms

# Output-layer rows whose largest change |theta_t - theta_0| is recorded (zero-gradient check).
OUTPUT_ROWS = {"unseen": UNSEEN_IDS, "rejected": REJECTED_IDS, "chosen": CHOSEN_IDS}


def _pair_rows(members: torch.Tensor, n_pairs: int) -> slice | torch.Tensor:
    """The rows of the runs ``members`` in a run-major (runs x pairs) flattening; a slice (a
    view, no copy) when the runs are consecutive."""
    first, count = int(members[0]), len(members)
    if torch.equal(members, torch.arange(first, first + count)):
        return slice(first * n_pairs, (first + count) * n_pairs)
    return (members[:, None] * n_pairs + torch.arange(n_pairs)).flatten()


def _select(logps: ResponseLogps, rows: slice | torch.Tensor) -> ResponseLogps:
    """The rows ``rows`` of every tensor of ``logps`` (a field that is None stays None)."""
    values = {f.name: getattr(logps, f.name) for f in dataclasses.fields(logps)}
    return ResponseLogps(**{name: None if value is None else value[rows] for name, value in values.items()})


def _all_finite(values: torch.Tensor) -> torch.Tensor:
    """Per run (leading axis): are all values finite? (max and min propagate NaN and show an
    infinity; on CPU two reductions are much cheaper than ``torch.isfinite`` of every value)."""
    dims = tuple(range(1, values.dim()))  # not flatten(1): a transposed gradient would be copied
    return torch.isfinite(values.amax(dims)) & torch.isfinite(values.amin(dims))


def _run_parts(terms: LossTerms, cfg: LossSettings, penalty: torch.Tensor, n_runs: int) -> dict[str, torch.Tensor]:
    """The logged parts of :func:`dppo.train.losses.preference_loss`, one value per run (the mean over
    that run's own pairs, not over the whole batch of runs); ``terms`` holds n_runs x pairs rows."""

    reward_w, reward_l = cfg.beta * terms.d_chosen, cfg.beta * terms.d_rejected
    pol = terms.policy
    rows = {  # per row; averaged per run below, all at once
        "dpo": get_loss("dpo")(terms, cfg)[0],
        "penalty": penalty,
        "reward_chosen": reward_w,
        "reward_rejected": reward_l,
        "margin": reward_w - reward_l,
        "r": terms.r,
        "f_r": terms.f_r,
        "frac_r_neg": (terms.r < 0).to(reward_w.dtype),
        "reward_acc": (reward_w > reward_l).to(reward_w.dtype),
        "logp_chosen": pol.chosen,
        "logp_rejected": pol.rejected,
        "reward_gen": cfg.beta * terms.d_gen,
        "logp_gen": pol.gen,
    }
    if cfg.needs_gen:
        rows["grad_weight_dpo"], rows["grad_weight_penalty"] = gradient_weights(terms, cfg)
    means = torch.stack(list(rows.values())).reshape(len(rows), n_runs, -1).mean(-1)
    parts = dict(zip(rows, means))
    if cfg.needs_gen:  # the mean over the rows where the penalty fires (0 where none does)
        fired = (terms.f_r > 0).reshape(n_runs, -1)
        for name in ("penalty", "dpo"):
            weight = rows[f"grad_weight_{name}"].reshape(n_runs, -1)
            parts[f"grad_weight_{name}_fired"] = (weight * fired).sum(1) / fired.sum(1).clamp(min=1)
    return parts


def _output_changes(policy: StackedPolicy, start: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per run: the largest |theta - theta_0| over the output-layer rows (weights and bias) of
    each response set of :data:`OUTPUT_ROWS`."""
    weight, bias = policy.output_layer()
    per_response = torch.maximum((weight - start[0]).abs().amax(-1), (bias - start[1]).abs())
    return {f"out_change_{name}": per_response[:, list(ids)].amax(-1) for name, ids in OUTPUT_ROWS.items()}


@dataclasses.dataclass(frozen=True)
class _LossGroup:
    """The runs trained with one loss setting: their indices, their pair rows, their reference."""

    cfg: LossSettings
    members: torch.Tensor
    rows: slice | torch.Tensor
    reference: ResponseLogps


def _objective(policy_logps: ResponseLogps, groups: Sequence[_LossGroup], n_runs: int):
    """The summed objective (each run's mean loss over its own pairs, so each run's gradient is
    its own) and the per-run loss and parts, each loss computed once over all its runs' rows."""
    dtype = policy_logps.chosen.dtype
    record = {"loss_value": torch.full((n_runs,), torch.nan, dtype=dtype)}
    objective = torch.zeros((), dtype=dtype)
    for group in groups:
        terms = loss_terms(_select(policy_logps, group.rows), group.reference, group.cfg)
        row_loss, penalty = get_loss(group.cfg.name)(terms, group.cfg)
        run_loss = row_loss.reshape(len(group.members), -1).mean(1)
        objective = objective + run_loss.sum()
        with torch.no_grad():
            record["loss_value"][group.members] = run_loss
            for name, value in _run_parts(terms, group.cfg, penalty, len(group.members)).items():
                if f"part_{name}" not in record:  # NaN for the losses without this part
                    record[f"part_{name}"] = torch.full((n_runs,), torch.nan, dtype=dtype)
                record[f"part_{name}"][group.members] = value
    return objective, record


def train_runs(
    policy: StackedPolicy,
    reference_logp: torch.Tensor,
    pairs: PreferencePairs,
    y_gen: torch.Tensor,
    losses: Sequence[LossSettings],
    steps: int,
    lr: float,
) -> pd.DataFrame:
    """Step 2 of every run of ``policy`` at once: full-batch Adam for ``steps`` updates, in place.

    Run r trains on ``pairs`` row r (runs, pairs) with loss ``losses[r]``, from the reference
    log-probabilities ``reference_logp[r]`` (prompts, responses) and y_gen ``y_gen[r]``
    (prompts,). Runs with equal loss settings are computed together.

    Returns one record per run and step ``0..steps`` (column ``run``; the state BEFORE update
    ``step``; the last is the final model). A run stops at the first step where its loss or a
    parameter gradient is not finite or a log-probability underflows float64: its records end
    there with ``diverged`` True and it is not updated again, while the others go on. Columns:
    the :func:`distribution_summary`, the loss and its parts (``part_*``, per run), the gradient
    magnitudes ``grad_chosen`` = mean over pairs of |dL_i/dpi(y_w|x_i)| and ``grad_rejected``
    likewise for y_l, and ``out_change_*`` (:func:`_output_changes`). The gradient magnitudes
    are the seed's Corollary-1 quantities: each pair's loss L_i is seen as a function of the
    probabilities pi(y|x_i) of its own prompt, so dL_i/dpi = dL_i/dlogpi / pi, where
    dL_i/dlogpi is taken by autograd through the loss library (total derivative: it also counts
    y_gen's term when y_gen is the same response).
    """
    n_runs, n_pairs = pairs.prompt.shape
    runs = torch.arange(n_runs)
    gen = y_gen.gather(1, pairs.prompt)  # y_gen of each pair's prompt
    flat = dict(chosen=pairs.chosen.flatten(), rejected=pairs.rejected.flatten(), gen=gen.flatten())

    def rows_of(logp: torch.Tensor) -> torch.Tensor:  # (runs, pairs, responses): pair i's own row
        return logp[runs[:, None], pairs.prompt]

    reference = pair_logps(rows_of(reference_logp.detach()).flatten(0, 1), **flat)
    by_loss = defaultdict(list)
    for run, cfg in enumerate(losses):
        by_loss[cfg].append(run)
    groups = []
    for cfg, members in by_loss.items():
        members = torch.tensor(members)
        rows = _pair_rows(members, n_pairs)
        groups.append(_LossGroup(cfg, members, rows, _select(reference, rows)))

    params = list(policy.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, foreach=True)
    start = tuple(t.detach().clone() for t in policy.output_layer())
    active = torch.ones(n_runs, dtype=torch.bool)
    last_step = torch.full((n_runs,), steps)
    history = defaultdict(list)
    for step in range(steps + 1):
        logp = policy()
        logp_rows = rows_of(logp)
        objective, record = _objective(pair_logps(logp_rows.flatten(0, 1), **flat), groups, n_runs)
        grad_rows, *param_grads = torch.autograd.grad(objective, [logp_rows, *params])
        with torch.no_grad():
            record.update(distribution_summary(logp))
            # The loss is each run's mean over pairs, so pair i's own gradient is n_pairs times its share.
            dloss_dprob = n_pairs * grad_rows / logp_rows.exp()
            for side in ("chosen", "rejected"):
                picked = dloss_dprob.gather(2, getattr(pairs, side)[..., None]).squeeze(-1)
                record[f"grad_{side}"] = picked.abs().mean(1)
            # An unbounded loss (minll's alpha f(r) logp(y_gen)) can run away; stop a run at its
            # first non-finite loss or parameter gradient instead of training on garbage, and
            # likewise once a probability underflows float64 (minll drives log pi(y_gen) to
            # -inf): from then on its recorded probabilities are exact zeros and mean nothing.
            finite = torch.isfinite(record["loss_value"]) & (logp.flatten(1).amin(1) > UNDERFLOW_LOGP)
            for grad in param_grads:
                finite &= _all_finite(grad)
            record["diverged"] = ~finite
            record.update(_output_changes(policy, start))
            record["step"] = torch.full((n_runs,), step)
            for key, value in record.items():
                history[key].append(value)
            last_step[active & ~finite] = step
            active &= finite
        if step == steps or not active.any():
            break
        stopped = ~active
        frozen = [p.detach()[stopped] for p in params]  # a copy: boolean indexing
        for parameter, grad in zip(params, param_grads):
            grad[stopped] = 0.0  # a stopped run's gradient may be NaN: keep Adam's state clean
            parameter.grad = grad
        optimizer.step()
        with torch.no_grad():  # Adam's momentum would still move a stopped run: put it back
            for parameter, before in zip(params, frozen):
                parameter[stopped] = before
    return _history_frame(history, last_step)


def _history_frame(history: dict[str, list[torch.Tensor]], last_step: torch.Tensor) -> pd.DataFrame:
    """Long format, run-major: the records of run r at steps 0..last_step[r]."""
    columns = {key: torch.stack(values, dim=1).numpy() for key, values in history.items()}  # (runs, steps)
    n_runs, n_steps = columns["step"].shape
    keep = (np.arange(n_steps)[None, :] <= last_step.numpy()[:, None]).flatten()
    frame = {"run": np.repeat(np.arange(n_runs), n_steps)[keep]}
    order = ["step", "loss_value", *[k for k in columns if k.startswith("part_")]]
    order += [k for k in columns if k not in order]
    frame.update({key: columns[key].flatten()[keep] for key in order})
    return pd.DataFrame(frame)


def fit_references(settings: ToySettings, jobs: Sequence[tuple[Scenario, int]]) -> tuple[StackedPolicy, torch.Tensor]:
    """Step 1 of every (scenario, seed) job at once; each starts from ``build_policy(hidden,
    seed)``. Returns the fitted stack (run j = job j) and each job's final KL."""
    policy = StackedPolicy.stack([build_policy(settings.hidden, seed, settings.output_rank) for _, seed in jobs])
    target = torch.stack([initial_distribution(scenario, settings.initial) for scenario, _ in jobs])
    kl = fit_distribution(policy, target, settings.sft_steps, settings.sft_lr)
    return policy, kl


def run_all(settings: ToySettings, scenarios: Iterable[Scenario] = SCENARIOS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every scenario x seed x loss: step 1 once per (scenario, seed), then step 2 with every
    loss of ``settings`` from that same reference model.

    Returns (per-step records, one step-1 row per scenario x seed); records are ordered by
    scenario, seed, loss (configured order) and step."""
    jobs = [(scenario, seed) for scenario in scenarios for seed in settings.seeds]
    references, step1_kl = fit_references(settings, jobs)
    with torch.no_grad():
        reference_logp = references()
    y_gen = greedy_responses(reference_logp)
    pairs = PreferencePairs.stack([make_preference_pairs(settings.pairs_per_prompt, seed) for _, seed in jobs])

    labels = list(settings.losses)
    # Run = loss * jobs + job: the runs of one loss are consecutive, so its rows are a view.
    job_of_run = torch.arange(len(jobs)).repeat(len(labels))
    runs = train_runs(
        references.select(job_of_run),
        reference_logp[job_of_run],
        PreferencePairs(*(getattr(pairs, name)[job_of_run] for name in ("prompt", "chosen", "rejected"))),
        y_gen[job_of_run],
        [settings.losses[label] for label in labels for _ in jobs],
        settings.steps,
        settings.lr,
    )
    run = runs.pop("run").to_numpy()
    job, loss = job_of_run.numpy()[run], run // len(jobs)
    runs.insert(0, "loss", np.array(labels, dtype=object)[loss])
    runs.insert(0, "seed", np.array([seed for _, seed in jobs])[job])
    runs.insert(0, "scenario", np.array([scenario.number for scenario, _ in jobs])[job])
    # Ordered as the per-run loop wrote them: scenario, seed, loss, step.
    runs = runs.iloc[np.lexsort((runs["step"], loss, job))].reset_index(drop=True)
    return runs, _step1_frame(jobs, reference_logp, y_gen, step1_kl, settings)


def _step1_frame(jobs, reference_logp, y_gen, step1_kl, settings: ToySettings) -> pd.DataFrame:
    """One row per (scenario, seed): the step-1 KL, y_gen and the step-1 and target summaries."""
    reached = distribution_summary(reference_logp)
    rows = []
    for j, (scenario, seed) in enumerate(jobs):
        target = distribution_summary(initial_distribution(scenario, settings.initial).log())
        rows.append({
            "scenario": scenario.number,
            "seed": seed,
            "step1_kl": float(step1_kl[j]),
            "y_gen": [int(y) for y in y_gen[j]],
            **{f"step1_{k}": float(v[j]) for k, v in reached.items()},
            **{f"target_{k}": float(v) for k, v in target.items()},
        })
    return pd.DataFrame.from_records(rows)
