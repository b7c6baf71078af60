"""Preference training (DPO, the DPPO penalties and the 3D-properties variants).

One step flows one way: the policy's log-probs of y_w and y_l (:class:`dppo.logprobs.ResponseScorer`,
prompts encoded once), then the trigger r and f(r) (:func:`dppo.losses.trigger`, once), then y_gen,
with autograd only where the penalty weight alpha f(r) is not zero, then the loss
(:func:`dppo.losses.preference_loss`, given that trigger). The reference model never runs here:
its log-probs come from the cache of :mod:`dppo.reference`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import Trainer, TrainerCallback

from dppo.batching import length_grouped_sampler
from dppo.io import load_causal_lm, load_tokenizer, pad_token_id, weights_digest
from dppo.logprobs import (
    ResponseBatchLogps,
    ResponseScorer,
    as_response_logps,
    can_share_prompt,
    check_inputs,
    gated_logps,
    response_logps,
)
from dppo.losses import ResponseLogps, Trigger, preference_loss, trigger
from dppo.reference import REF_COLUMNS, ids
from dppo.settings import Experiment, LossSettings
from dppo.training import RunPaths, fit_and_save

log = logging.getLogger(__name__)


def subset_indices(n_rows: int, n_train: int | None, seed: int) -> np.ndarray:
    """The first ``n_train`` rows of one fixed permutation: smaller subsets are nested in
    larger ones, so a data-efficiency sweep only adds rows."""
    if n_train is None:
        n_train = n_rows
    if not 0 < n_train <= n_rows:
        raise ValueError(f"n_train={n_train} but the preference training split has {n_rows} rows")
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n_train])


def load_training_rows(pref_file, ygen_file, ref_file) -> pd.DataFrame:
    """Prepared preference rows joined with y_gen and the reference log-probs (row order)."""
    rows = pd.read_parquet(pref_file)
    ygen = pd.read_parquet(ygen_file)
    ref = pd.read_parquet(ref_file)
    for name, other in (("y_gen", ygen), ("reference log-probs", ref)):
        if len(other) != len(rows) or not (other["prompt_id"].to_numpy() == rows["prompt_id"].to_numpy()).all():
            raise ValueError(f"the {name} file does not match the preference rows; rerun its rule")
    rows["gen_ids"] = ygen["gen_ids"]
    for column in REF_COLUMNS:
        rows[column] = ref[column]
    return rows


def preference_records(rows) -> list[dict]:
    """Training rows as plain int lists and float reference log-probs (mappings with the
    columns of :func:`load_training_rows`)."""
    return [
        {
            **{key: ids(r[key]) for key in ("prompt_ids", "chosen_ids", "rejected_ids", "gen_ids")},
            **{column: float(r[column]) for column in REF_COLUMNS},
        }
        for r in rows
    ]


def collate(rows: list[dict]) -> dict:
    """Token lists stay lists (the log-prob forward packs them); reference log-probs become
    tensors so the Trainer moves them to the device."""
    return {
        "rows": rows,
        **{column: torch.tensor([r[column] for r in rows], dtype=torch.float32) for column in REF_COLUMNS},
    }


def policy_logps(model, batch: dict, cfg: LossSettings, track_gen: bool,
                 pad: int) -> tuple[ResponseLogps, ResponseLogps, Trigger]:
    """The policy's and the cached reference's log-probs of one batch, and its trigger.

    y_gen is scored when the loss penalizes it (with autograd on the rows whose alpha f(r) is
    not zero) or when it is only tracked (``track_gen``: no autograd, for the dynamics figure)."""
    rows = batch["rows"]
    prompts = [row["prompt_ids"] for row in rows]
    pairs = [[row["chosen_ids"], row["rejected_ids"]] for row in rows]
    with_gen = cfg.needs_gen or track_gen
    gens = [row["gen_ids"] for row in rows] if with_gen else None
    responses = [[*pair, gen] for pair, gen in zip(pairs, gens)] if with_gen else pairs
    check_inputs(prompts, responses)
    shared = can_share_prompt(model, prompts, responses)
    scorer = ResponseScorer(model, prompts, pad, share_prompt=shared)
    pair = scorer.score(list(range(len(rows))), pairs)
    lengths = {"chosen_len": pair.lengths[:, 0], "rejected_len": pair.lengths[:, 1]}
    reference = ResponseLogps(chosen=batch["ref_chosen"], rejected=batch["ref_rejected"], **lengths)
    trig = trigger(ResponseLogps(chosen=pair.sums[:, 0], rejected=pair.sums[:, 1], **lengths), reference, cfg)
    if not with_gen:
        return as_response_logps(pair), reference, trig
    needs_grad = trig.penalized(cfg).tolist() if cfg.needs_gen else [False] * len(rows)
    token_level = cfg.name == "unll" and cfg.unll_level == "token"
    gen_sums, gen_tokens, gen_mask = gated_logps(scorer, gens, needs_grad, token_level)
    both = ResponseBatchLogps(
        sums=torch.cat([pair.sums, gen_sums.unsqueeze(1)], dim=1),
        lengths=torch.tensor([[len(r) for r in group] for group in responses], dtype=torch.long, device=scorer.device),
        token_logps=gen_tokens, token_mask=gen_mask, token_logps_for=2 if token_level else None,
    )
    policy = as_response_logps(both)
    reference.gen, reference.gen_len = batch["ref_gen"], policy.gen_len
    return policy, reference, trig


class NonFiniteLossError(FloatingPointError):
    pass


class PreferenceTrainer(Trainer):
    """``Trainer`` whose loss is :func:`dppo.losses.preference_loss`; logs every loss part."""

    def __init__(self, *args, experiment: Experiment, pad_token_id: int, probe: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.loss_config = experiment.loss
        # DPO does not need y_gen; tracking its log-prob (no grad) shows the penalties' effect
        # against a baseline in the dynamics figure.
        self.track_gen = experiment.track_gen
        self.pad_token_id = pad_token_id
        # Fixed rows whose log-probs are logged every `probe_every` steps: batch means mix
        # different rows (and, with length grouping, different lengths) at every step, so only
        # a fixed set shows how the likelihood of y_w, y_l and y_gen moves (3D-properties).
        self.probe = probe or []
        self._parts = defaultdict(list)
        self.skipped_steps = 0

    def _get_train_sampler(self, train_dataset=None):
        # Trainer's own length grouping needs an `input_ids` column; ours sorts by packed width.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "rows"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return length_grouped_sampler(dataset.rows, batch, with_gen=self.loss_config.needs_gen)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy, reference, trig = policy_logps(model, inputs, self.loss_config, self.track_gen, self.pad_token_id)
        loss, parts = preference_loss(policy, reference, self.loss_config, trig)
        if not torch.isfinite(loss):
            message = (
                f"non-finite loss at step {self.state.global_step} of experiment {self.experiment.name!r}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            )
            if self.experiment.on_nonfinite == "stop":
                raise NonFiniteLossError(message)
            log.warning("%s; skipping the batch", message)
            self.skipped_steps += 1
            loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        for key, value in parts.items():
            self._parts[key].append(value.item())
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, start_time=None) -> None:
        # Attach the mean of every loss part since the previous log (one optimizer step).
        if "loss" in logs:
            for key, values in self._parts.items():
                logs[key if key != "loss" else "loss_parts_mean"] = float(np.mean(values))
            self._parts.clear()
            step, every = self.state.global_step, self.experiment.probe_every
            if self.probe and (step == 1 or step % every == 0 or step == self.state.max_steps):
                logs.update(self.probe_logps())
        super().log(logs, start_time)

    @torch.no_grad()
    def probe_logps(self) -> dict[str, float]:
        """Mean log-probs of y_w, y_l and y_gen on the fixed probe rows (eval mode, no grad)."""
        was_training = self.model.training
        self.model.eval()
        responses = [[row["chosen_ids"], row["rejected_ids"], row["gen_ids"]] for row in self.probe]
        sums = response_logps(self.model, [row["prompt_ids"] for row in self.probe], responses,
                              self.pad_token_id).sums.float().mean(dim=0)
        self.model.train(was_training)
        return {f"probe_logp_{name}": float(v) for name, v in zip(("chosen", "rejected", "gen"), sums)}


class FiniteGradientGuard(TrainerCallback):
    """Stops (never saves) when a gradient is non-finite before the optimizer step."""

    def __init__(self, experiment: str):
        self.experiment = experiment

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise NonFiniteLossError(
                    f"non-finite gradient of {name} at step {state.global_step} of experiment {self.experiment!r}"
                )


def train_preference(experiment: Experiment, init_dir: str | Path, rows: pd.DataFrame, paths: RunPaths,
                     probe_rows: pd.DataFrame | None = None, trust_remote_code: bool = False) -> None:
    """Train ``experiment`` from the model in ``init_dir`` on ``rows`` (prepared preference rows
    joined with y_gen and the reference log-probs, :func:`load_training_rows`)."""
    torch.manual_seed(experiment.optim.seed)
    tokenizer = load_tokenizer(init_dir, trust_remote_code)
    model = load_causal_lm(init_dir, trust_remote_code)
    records = preference_records(rows.to_dict("records"))
    record = {"stage": "preference", "experiment": experiment.name, "settings": experiment.to_dict(),
              "rows": len(records), "init": str(init_dir), "init_sha256": weights_digest(init_dir)}
    fit_and_save(
        PreferenceTrainer, model=model, tokenizer=tokenizer, rows=records, collator=collate, opt=experiment.optim,
        paths=paths, record=record, callbacks=[FiniteGradientGuard(experiment.name)],
        experiment=experiment, pad_token_id=pad_token_id(tokenizer),
        probe=preference_records(probe_rows.to_dict("records")) if probe_rows is not None else None,
    )


def experiment_job(experiment: dict, init_dir: str, train_file: str, ygen_file: str, ref_file: str,
                   paths: dict, subset_seed: int, trust_remote_code: bool) -> None:
    """One experiment of the grid (``experiment``: :meth:`Experiment.to_dict`), from file paths
    only, so :func:`dppo.launch.run_job` can run it in-process or under torchrun."""
    experiment = Experiment.from_dict(experiment)
    all_rows = load_training_rows(train_file, ygen_file, ref_file)
    try:
        rows = all_rows.iloc[subset_indices(len(all_rows), experiment.n_train, subset_seed)]
    except ValueError as err:
        raise ValueError(f"experiments.{experiment.name}.n_train: {err}") from None
    # The first rows of the same permutation: one probe set shared by every experiment, and
    # inside every subset of at least that size.
    n_probe = min(experiment.probe_rows, len(rows))
    probe = all_rows.iloc[subset_indices(len(all_rows), n_probe, subset_seed)] if n_probe else None
    log.info("experiment %s: %d training rows, settings %s", experiment.name, len(rows), experiment.to_dict())
    train_preference(experiment, init_dir, rows, RunPaths(**paths), probe, trust_remote_code)
