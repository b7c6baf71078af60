"""The training loop SFT and preference training share: batches, gradient accumulation, AdamW
with warm-up and a decaying schedule, clipping, and multi-process data parallelism on torch's
engine (:mod:`dppo.train.distributed`); checkpoints (:mod:`dppo.train.checkpoints`), the metrics
log, SIGTERM and the finished model (:mod:`dppo.train.publish`) live beside it.

A stage gives the loop a :class:`Task`: the loss of a list of rows (and the parts to log), and
optionally the rows' lengths (for length-grouped batches) and extra metrics per step. The loop
imports torch only (``transformers.Trainer`` costs 2-4 s of start-up per job and about as
much again per step on the tiny models of the embedded default).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from dppo.runtime.io import cleanup_partial_outputs
from dppo.settings import OptimSettings
from dppo.train.checkpoints import CHECKPOINT_PREFIX, last_checkpoint, load_checkpoint, run_fingerprint, save_checkpoint
from dppo.train.distributed import (
    accumulating,
    agree,
    all_reduce_sum,
    barrier,
    common_keys,
    device,
    gradient_scale,
    init_distributed,
    total_grad_norm,
    unwrapped,
    world,
    wrap,
)
from dppo.train.errors import NonFiniteError, TrainingTerminated
from dppo.train.faults import injected_fault, injected_nonfinite
from dppo.train.metrics_log import MetricsLog
from dppo.train.publish import FINAL, METRICS, finished_problem, save_model
from dppo.train.schedule import batch_rows, lr_factor, micro_batches, total_steps
from dppo.train.signals import SignalFlag

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a stage gives the loop."""

    def loss(self, model, rows: Sequence[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over ``rows`` (over their rows, or their tokens: see :meth:`weight`) and the
        parts to log (detached scalars)."""

    def weight(self, rows: Sequence[dict]) -> int:
        """How many units ``loss`` averages over (rows, or response tokens), so that micro
        batches and processes add up to the mean over the whole batch."""

    def lengths(self) -> list[int] | None:
        """Per-row lengths for length-grouped batches, or None."""

    def step_metrics(self, model, step: int, total: int) -> dict[str, float]:
        """Extra metrics logged after optimizer step ``step`` (e.g. fixed probe rows)."""


def _optimizer(model, opt: OptimSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and norm weights
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(0.9, 0.999), eps=1e-8)


def check_finite_gradients(model, grad_norm: torch.Tensor, step: int, run: str) -> None:
    """Raise, naming a parameter, when the gradients' norm (the same on every process) is not finite."""
    if torch.isfinite(grad_norm):
        return
    for name, param in unwrapped(model).named_parameters():
        grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad  # a shard, under FSDP2
        if grad is not None and not torch.isfinite(grad).all():
            break
    else:
        name = "a parameter shard of another process"
    raise NonFiniteError(f"non-finite gradient of {name} at step {step} of {run!r}")


def _prepare(model, opt: OptimSettings, distributed: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model on this process's device in training mode, wrapped for the processes, and its optimizer."""
    model.to(device())
    if opt.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model = wrap(model, distributed)
    return model, _optimizer(model, opt)


def _warn_if_frozen(opt: OptimSettings, total: int, run: str) -> None:
    # Linear warm-up starts at 0 (as in transformers): a run no longer than its warm-up never
    # changes the weights.
    if not any(lr_factor(opt, step, total) > 0 for step in range(total)):
        log.warning("%s: every one of its %d update(s) has learning rate 0 (warm-up ratio %g); the model will "
                    "not change", run, total, opt.warmup_ratio)


def _open_run_dir(checkpoint_dir: Path, fingerprint: str, run: str) -> tuple[Path, bool]:
    """(``checkpoint_dir/run-<fingerprint>``, whether it holds the finished run already); runs of
    other settings, rows or initial weights there are removed, as is a finished model that no
    longer matches its manifest and what killed writes left."""
    rank = world()[0]
    run_dir = checkpoint_dir / f"run-{fingerprint}"
    for stale in sorted(p for p in checkpoint_dir.glob("run-*") if p != run_dir):
        if rank == 0:
            log.warning("discarding %s: a run with other settings, data or initial weights", stale)
            shutil.rmtree(stale, ignore_errors=True)
    unfinished = finished_problem(run_dir)
    if unfinished is None:
        log.info("%s: already finished in %s (a killed job's earlier part), not trained again", run, run_dir)
        return run_dir, True
    if (run_dir / FINAL).exists() and rank == 0:  # damaged after it was saved: trained again
        log.warning("discarding the finished model %s: %s", run_dir / FINAL, unfinished)
        shutil.rmtree(run_dir / FINAL, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in cleanup_partial_outputs(run_dir):
        log.warning("removed %s, left by a killed write", leftover)
    return run_dir, False


def _accumulate(model, task: Task, mine: list[dict], filler: list[dict], micro: int, poisoned: bool,
                use_bf16: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Forward and backward of this process's rows of the batch (``mine``) in micro batches of
    ``micro``; the last backward reduces the gradients over the processes (a process without
    rows runs ``filler`` with weight 0, so that it reduces too). Returns (the loss
    parts, weighted to the whole batch's mean, then summed over the processes; the parts of the
    first micro batch whose loss is not finite, or None). Every micro batch runs whatever its
    loss, so every process enters the same gradient reduction; a step with a non-finite loss is
    dropped after it (:func:`_agree`)."""
    total_weight = torch.tensor([float(task.weight(mine))], device=device())
    all_reduce_sum([total_weight])  # the whole batch's units, over every process
    chunks = [mine[begin : begin + micro] for begin in range(0, len(mine), micro)]
    logged: dict[str, torch.Tensor] = {}
    nonfinite = None
    scale = gradient_scale(model)
    for index, chunk in enumerate(chunks or [filler]):
        with accumulating(model, sync=index == max(len(chunks), 1) - 1):
            with torch.autocast(device().type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, parts = task.loss(model, chunk)
            if not chunks:  # no rows here (a short last batch): join the reduction, adding nothing
                (loss * 0.0).backward()
                return {key: torch.zeros((), device=loss.device) for key in ("loss", *parts)}, None
            if index == 0 and poisoned:
                loss = loss * float("nan")
            if nonfinite is None and not torch.isfinite(loss):
                nonfinite = {"loss": loss.detach(), **parts}
            share = task.weight(chunk) / total_weight  # the micro losses add up to the batch mean
            weighted = loss * share
            (weighted * scale if scale != 1.0 else weighted).backward()
        for key, value in {"loss": loss.detach(), **parts}.items():
            logged[key] = logged.get(key, 0.0) + value.detach().float() * share
    return logged, nonfinite


def _agree(nonfinite: dict[str, torch.Tensor] | None, terminate: bool, step: int, run: str,
           on_nonfinite: str) -> tuple[str | None, bool]:
    """What every process does with step ``step`` (0-based), decided together: (why it is skipped,
    or None; whether to checkpoint and stop). Raises :class:`NonFiniteError` on every process
    when any loss is not finite and ``on_nonfinite`` is "stop". A SIGTERM to a single process is
    acted on at the end of the step instead (by the loop)."""
    rank, size = world()
    where = f" on process {rank}" if size > 1 else ""
    message = None if nonfinite is None else (
        f"non-finite loss at step {step + 1} of {run!r}{where}: "
        + ", ".join(f"{k}={float(v):.4g}" for k, v in nonfinite.items()))
    bad, stop = agree(message is not None, terminate and size > 1)
    if bad is not None:
        message = message or f"non-finite loss at step {step + 1} of {run!r} on process {bad} (its log names the parts)"
        if on_nonfinite == "stop":
            raise NonFiniteError(message)
    return message, stop


def _update(model, optimizer, params: list[torch.Tensor], opt: OptimSettings, lr: float, step: int,
            run: str) -> float:
    """Clip the reduced gradients and take the optimizer step at ``lr``; returns the norm before clipping."""
    grad_norm = total_grad_norm(params)
    check_finite_gradients(model, grad_norm, step, run)
    torch.nn.utils.clip_grads_with_norm_(params, opt.max_grad_norm, grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def train(model, tokenizer, rows: Sequence[dict], task: Task, opt: OptimSettings, checkpoint_dir: str | Path,
          record: dict, on_nonfinite: str = "stop", distributed: str = "ddp", start_from: Path | None = None,
          stop_at: int | None = None) -> Path:
    """Train ``model`` on ``rows`` with ``task``'s loss and return the run directory holding the
    finished model (``final/``, with ``record``) and the per-step metrics (``metrics.jsonl``).

    The run directory is ``checkpoint_dir/run-<fingerprint>``: a rerun of the same run resumes
    from its newest complete checkpoint (or returns at once when it had finished). The caller
    publishes the results (the rule's outputs live elsewhere: Snakemake deletes a failed job's
    outputs). ``on_nonfinite``: "stop" raises on a non-finite loss, "skip" drops that batch
    (counted in the record). Under torchrun the model is wrapped by ``distributed`` (ddp or
    fsdp2), and a non-finite loss or a SIGTERM on any process makes every process skip, stop or
    checkpoint at the same step (:func:`dppo.train.distributed.agree`).

    A round of on-policy DPPO (:mod:`dppo.train.rounds`) is a part of one longer run:
    ``start_from``, a checkpoint of the run so far (weights, optimizer, RNG: the previous round's
    state), is where a fresh run directory starts (its own newest checkpoint comes first, so a
    killed round resumes from itself); ``stop_at`` ends it after that many updates of the same
    schedule (the learning rate still decays over the whole run's steps), with a checkpoint of
    that step kept in the run directory beside ``final/`` for the next round."""
    init_distributed()
    rank, size = world()
    run = record.get("experiment", record.get("stage", "run"))
    run_dir, finished = _open_run_dir(Path(checkpoint_dir), run_fingerprint(model, rows, opt, record), run)
    if finished:
        return run_dir

    model, optimizer = _prepare(model, opt, distributed)
    checkpoint = last_checkpoint(run_dir) or start_from
    start = saved = load_checkpoint(checkpoint, model, optimizer) if checkpoint else 0
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    metrics = MetricsLog(run_dir / METRICS, start) if rank == 0 else None
    fields = {key: record[key] for key in ("seed", "round") if key in record}
    total = total_steps(opt, len(rows))
    end = total if stop_at is None else stop_at
    if not start <= end <= total:
        raise ValueError(f"{run}: cannot run from step {start} to step {end} of {total}")
    _warn_if_frozen(opt, total, run)
    per_process, micro = micro_batches(opt, size)
    lengths = task.lengths() if opt.group_by_length else None
    use_bf16 = opt.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    fault, poisoned = injected_fault(run), injected_nonfinite(run)
    skipped = 0
    params = [p for p in model.parameters() if p.requires_grad]
    with SignalFlag() as terminate, tqdm(total=total, initial=start, desc=f"train {run}", disable=rank != 0) as bar:
        for step in range(start, end):
            batch = batch_rows(len(rows), opt, step, lengths)
            mine = [rows[i] for i in batch[rank * per_process : (rank + 1) * per_process]]
            logged, nonfinite = _accumulate(model, task, mine, [rows[batch[0]]], micro, poisoned(step + 1), use_bf16)
            skip, stop = _agree(nonfinite, terminate.raised, step, run, on_nonfinite)
            if stop:  # before this step's update: the state of `step` updates is checkpointed
                optimizer.zero_grad(set_to_none=True)
                _terminate(run_dir, step, saved, model, optimizer)
            if skip is not None:  # on every process alike (its gradients are dropped)
                log.warning("%s; skipping the batch%s", skip, " on every process" if size > 1 else "")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                bar.update(1)
                continue
            names = common_keys(logged)  # the parts every process logged: one reduction size
            values = torch.stack([logged[k].reshape(()) for k in names])
            all_reduce_sum([values])
            lr = opt.lr * lr_factor(opt, step, total)
            grad_norm = _update(model, optimizer, params, opt, lr, step + 1, run)
            done = step + 1
            extra = task.step_metrics(unwrapped(model), done, total)  # every process: FSDP2 gathers weights
            if metrics is not None:
                parts = dict(zip(names, values.tolist()))
                entry = {"step": done, **fields, "epoch": done / math.ceil(len(rows) / opt.batch_size), "lr": lr,
                         "grad_norm": grad_norm, **parts, **extra}
                metrics.append(entry)
                bar.set_postfix(loss=f"{parts['loss']:.4f}")
            bar.update(1)
            fault(done)
            if terminate.raised and size == 1:
                _terminate(run_dir, done, saved, model, optimizer)
            if done % opt.save_steps == 0 and done < total:
                saved = done
                save_checkpoint(run_dir, done, model, optimizer)
    if end < total and saved != end:  # a round's end: the next round starts from this state
        save_checkpoint(run_dir, end, model, optimizer)
    save_model(model, tokenizer, run_dir / FINAL, {**record, "steps": end, "skipped_steps": skipped,
                                                   "resumed_from": str(checkpoint) if checkpoint else None})
    if rank == 0 and end == total:
        for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    barrier()
    return run_dir


def _terminate(run_dir: Path, done: int, saved: int, model, optimizer) -> None:
    """Checkpoint the state after ``done`` updates (unless the checkpoint of step ``saved`` is
    that state) and stop every process."""
    if done != saved:
        save_checkpoint(run_dir, done, model, optimizer)
    barrier()
    if done == 0:
        raise TrainingTerminated("terminated (SIGTERM) before the first step; nothing to save, rerun the job")
    raise TrainingTerminated(f"terminated (SIGTERM) at step {done}; checkpoint saved, rerun the job to resume")
