"""Preference training (DPO, the DPPO penalties and the 3D-properties variants).

The reference model never runs here: its log-probs of y_w, y_l and y_gen come from the
cache written once by :func:`cache_reference_logps`. The policy scores all responses of a
prompt in one concatenated forward (:func:`dppo.logprobs.response_logps`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from dppo.batching import length_grouped_sampler
from dppo.io import load_causal_lm, load_tokenizer, pad_token_id, weights_digest, write_parquet
from dppo.logprobs import ResponseBatchLogps, as_response_logps, pair_and_gen_logps, response_logps
from dppo.losses import LossConfig, ResponseLogps, preference_loss, trigger, weighting
from dppo.training import OptimConfig, fit_and_save

log = logging.getLogger(__name__)
REF_COLUMNS = ("ref_chosen", "ref_rejected", "ref_gen")


def ids(values) -> list[int]:
    return [int(v) for v in values]


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


def _responses(batch: dict, with_gen: bool) -> list[list[list[int]]]:
    keys = ("chosen_ids", "rejected_ids", "gen_ids") if with_gen else ("chosen_ids", "rejected_ids")
    return [[row[k] for k in keys] for row in batch["rows"]]


def collate(rows: list[dict]) -> dict:
    """Token lists stay lists (the log-prob forward packs them); reference log-probs become
    tensors so the Trainer moves them to the device."""
    return {
        "rows": rows,
        **{column: torch.tensor([r[column] for r in rows], dtype=torch.float32) for column in REF_COLUMNS},
    }


class NonFiniteLossError(FloatingPointError):
    pass


class PreferenceTrainer(Trainer):
    """``Trainer`` whose loss is :func:`dppo.losses.preference_loss`; logs every loss part."""

    def __init__(self, *args, loss_config: LossConfig, pad_token_id: int, experiment: str,
                 track_gen: bool = True, on_nonfinite: str = "stop", probe: list[dict] | None = None,
                 probe_every: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        # Fixed rows whose log-probs are logged every `probe_every` steps: batch means mix
        # different rows (and, with length grouping, different lengths) at every step, so only
        # a fixed set shows how the likelihood of y_w, y_l and y_gen moves (3D-properties).
        self.probe = probe or []
        self.probe_every = probe_every
        self.loss_config = loss_config
        self.pad_token_id = pad_token_id
        self.experiment = experiment
        # DPO does not need y_gen; tracking its log-prob (no grad) shows the penalties' effect
        # against a baseline in the dynamics figure.
        self.track_gen = track_gen
        self.on_nonfinite = on_nonfinite
        self._parts = defaultdict(list)
        self.skipped_steps = 0

    def _get_train_sampler(self, train_dataset=None):
        # Trainer's own length grouping needs an `input_ids` column; ours sorts by packed width.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "rows"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return length_grouped_sampler(dataset.rows, batch, with_gen=self.loss_config.needs_gen)
        return super()._get_train_sampler(train_dataset)

    def _forward(self, model, batch) -> ResponseLogps:
        cfg = self.loss_config
        prompts = [row["prompt_ids"] for row in batch["rows"]]
        token_level_unll = cfg.name == "unll" and cfg.unll_level == "token"
        pairs = _responses(batch, with_gen=False)
        if not (cfg.needs_gen or self.track_gen):
            return as_response_logps(response_logps(model, prompts, pairs, self.pad_token_id))
        if cfg.needs_gen:
            gate = lambda pair: self._penalty_weighted(pair, batch)  # noqa: E731
        else:  # y_gen only tracked (no grad): it shows the penalties' effect against a baseline
            gate = lambda pair: torch.zeros(len(prompts), dtype=torch.bool)  # noqa: E731
        return as_response_logps(pair_and_gen_logps(
            model, prompts, pairs, [row["gen_ids"] for row in batch["rows"]], self.pad_token_id,
            gen_needs_grad=gate, gen_token_logps=token_level_unll,
        ))

    def _penalty_weighted(self, pair: ResponseBatchLogps, batch: dict) -> torch.Tensor:
        """Rows whose y_gen penalty weight alpha f(r) is not zero; the others give y_gen no
        gradient. r depends on y_w and y_l only (the same trigger as the loss)."""
        cfg = self.loss_config
        lengths = {"chosen_len": pair.lengths[:, 0], "rejected_len": pair.lengths[:, 1]}
        policy = ResponseLogps(chosen=pair.sums[:, 0], rejected=pair.sums[:, 1], **lengths)
        reference = ResponseLogps(chosen=batch["ref_chosen"], rejected=batch["ref_rejected"], **lengths)
        return cfg.alpha * weighting(cfg.f)(trigger(policy, reference, cfg), cfg.zeta) != 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        policy = self._forward(model, inputs)
        lengths = {"chosen_len": policy.chosen_len, "rejected_len": policy.rejected_len}
        reference = ResponseLogps(
            chosen=inputs["ref_chosen"], rejected=inputs["ref_rejected"], **lengths,
            gen=inputs["ref_gen"] if policy.gen is not None else None, gen_len=policy.gen_len,
        )
        loss, parts = preference_loss(policy, reference, self.loss_config)
        if not torch.isfinite(loss):
            message = (
                f"non-finite loss at step {self.state.global_step} of experiment {self.experiment!r}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            )
            if self.on_nonfinite == "stop":
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
            step = self.state.global_step
            if self.probe and (step == 1 or step % self.probe_every == 0 or step == self.state.max_steps):
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


def train_preference(
    init_dir: str | Path,
    rows: pd.DataFrame,
    out_dir: str | Path,
    metrics_file: str | Path,
    loss_config: LossConfig,
    opt: OptimConfig,
    checkpoint_dir: str | Path,
    experiment: str,
    track_gen: bool = True,
    on_nonfinite: str = "stop",
    trust_remote_code: bool = False,
    probe_rows: pd.DataFrame | None = None,
    probe_every: int = 1,
) -> None:
    loss_config.validate()
    torch.manual_seed(opt.seed)
    tokenizer = load_tokenizer(init_dir, trust_remote_code)
    model = load_causal_lm(init_dir, trust_remote_code)
    pad = pad_token_id(tokenizer)
    records = preference_records(rows.to_dict("records"))
    fit_and_save(
        PreferenceTrainer, model=model, tokenizer=tokenizer, rows=records, collator=collate, opt=opt,
        checkpoint_dir=checkpoint_dir, out_dir=out_dir, metrics_file=metrics_file,
        extra={"stage": "preference", "experiment": experiment, "loss": asdict(loss_config), "rows": len(records),
               "init": str(init_dir), "init_sha256": weights_digest(init_dir)},
        callbacks=[FiniteGradientGuard(experiment)],
        loss_config=loss_config, pad_token_id=pad, experiment=experiment,
        track_gen=track_gen, on_nonfinite=on_nonfinite, probe_every=probe_every,
        probe=preference_records(probe_rows.to_dict("records")) if probe_rows is not None else None,
    )


def experiment_job(spec: dict, init_dir: str, train_file: str, ygen_file: str, ref_file: str, out_dir: str,
                   metrics_file: str, checkpoint_dir: str, subset_seed: int = 0, trust_remote_code: bool = False) -> None:
    """One experiment of the config grid (``spec`` = its expanded entry), from file paths only,
    so :func:`dppo.launch.run_job` can run it in-process or under torchrun."""
    from dppo.config import loss_config, optim_config

    all_rows = load_training_rows(train_file, ygen_file, ref_file)
    try:
        rows = all_rows.iloc[subset_indices(len(all_rows), spec.get("n_train"), subset_seed)]
    except ValueError as err:
        raise ValueError(f"experiments.{spec['name']}.n_train: {err}") from None
    # The first rows of the same permutation: one probe set shared by every experiment, and
    # inside every subset of at least that size.
    n_probe = min(spec.get("probe_rows", 0), len(rows))
    probe = all_rows.iloc[subset_indices(len(all_rows), n_probe, subset_seed)] if n_probe else None
    log.info("experiment %s: %d training rows, spec %s", spec["name"], len(rows), spec)
    train_preference(
        init_dir=init_dir, rows=rows, out_dir=out_dir, metrics_file=metrics_file, loss_config=loss_config(spec),
        opt=optim_config(spec), checkpoint_dir=checkpoint_dir, experiment=spec["name"],
        track_gen=spec.get("track_gen", True), on_nonfinite=spec.get("on_nonfinite", "stop"),
        trust_remote_code=trust_remote_code, probe_rows=probe, probe_every=spec.get("probe_every", 1),
    )


@torch.no_grad()
def cache_reference_logps(model_dir, pref_file, ygen_file, out_file, batch_size: int = 32,
                          trust_remote_code: bool = False) -> pd.DataFrame:
    """log pi_ref of y_w, y_l and y_gen for every preference training row, computed once."""
    model = load_causal_lm(model_dir, trust_remote_code).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    pad = pad_token_id(tokenizer)
    rows = pd.read_parquet(pref_file)
    ygen = pd.read_parquet(ygen_file)
    sums = []
    # Length-sorted batches waste little compute on padding; results go back in row order.
    order = np.argsort([len(p) for p in rows["prompt_ids"]], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs"):
        idx = order[start : start + batch_size]
        prompts = [ids(rows["prompt_ids"].iloc[i]) for i in idx]
        responses = [
            [ids(rows["chosen_ids"].iloc[i]), ids(rows["rejected_ids"].iloc[i]), ids(ygen["gen_ids"].iloc[i])]
            for i in idx
        ]
        sums.append((idx, response_logps(model, prompts, responses, pad).sums.float().cpu().numpy()))
    values = np.zeros((len(rows), 3))
    for idx, block in sums:
        values[idx] = block
    out = pd.DataFrame({"prompt_id": rows["prompt_id"], **{c: values[:, k] for k, c in enumerate(REF_COLUMNS)}})
    write_parquet(out_file, out)
    return out
