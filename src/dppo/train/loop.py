"""The training loop SFT and preference training share: batches, gradient accumulation, AdamW
with warm-up and a decaying schedule, clipping, multi-process data parallelism, checkpoints a
killed run resumes from bit-identically, the per-step metrics log, and the atomic final save.

A stage gives the loop a :class:`Task`: the loss of a list of rows (and the parts to log), and
optionally the rows' lengths (for length-grouped batches) and extra metrics per step. The loop
imports torch only (``transformers.Trainer`` costs 2-4 s of start-up per job and about as
much again per step on the tiny models of the embedded default).

Checkpoints (``<checkpoint_dir>/run-<fingerprint>/checkpoint-<step>/``) are written to a
temporary directory and renamed into place; a manifest with every file's size and SHA-256 is
written last. A checkpoint counts only when its manifest and every file validate; anything
else is removed with a warning naming it, so a kill at any moment never leaves a state that
a rerun trips over. The finished model (``final/``) carries a manifest too (written by
:func:`save_model`); :func:`publish_model` copies it to the rule's output, checked against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from dppo.runtime.io import (
    MODEL_MANIFEST,
    TRAINING_RECORD,
    DamagedModelError,
    atomic_output_dir,
    cleanup_partial_outputs,
    manifest_problem,
    read_manifest,
    write_manifest,
    write_text,
)
from dppo.settings import OptimSettings

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
MEGABATCH_FACTOR = 50  # length grouping sorts within random runs of 50 batches, as transformers does


class TrainingTerminated(RuntimeError):
    """SIGTERM stopped training after a checkpoint; rerunning the job resumes from it."""


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient: the run stops and saves no model."""


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


# ----------------------------------------------------------------------------- processes


def world() -> tuple[int, int]:
    """(rank, world size) of this process (torchrun sets RANK / WORLD_SIZE)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    rank, size = world()
    if size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over the processes (in place), as one flat buffer."""
    if not tensors or world()[1] == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


# ----------------------------------------------------------------------------- schedule


def micro_batches(opt: OptimSettings) -> tuple[int, int]:
    """(rows per process per batch, rows per micro batch): the effective batch stays
    ``opt.batch_size`` whatever the number of processes."""
    _, size = world()
    if opt.batch_size % size:
        raise ValueError(f"batch_size {opt.batch_size} is not divisible by the {size} processes")
    per_process = opt.batch_size // size
    micro = min(opt.micro_batch_size or per_process, per_process)
    if per_process % micro:
        raise ValueError(f"{per_process} rows per process is not a multiple of micro_batch_size {micro}")
    return per_process, micro


def total_steps(opt: OptimSettings, n_rows: int) -> int:
    per_epoch = math.ceil(n_rows / opt.batch_size)
    return opt.max_steps if opt.max_steps > 0 else max(1, math.ceil(opt.epochs * per_epoch))


def lr_factor(opt: OptimSettings, step: int, total: int) -> float:
    """Multiplier of ``opt.lr`` for the update after ``step`` updates (warm-up, then decay)."""
    warmup = math.ceil(opt.warmup_ratio * total)
    if opt.scheduler == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if opt.scheduler == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if opt.scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine


def batch_order(n_rows: int, opt: OptimSettings, epoch: int, lengths: list[int] | None) -> list[int]:
    """The row order of one epoch, fixed by (seed, epoch): a random permutation, or with
    ``group_by_length`` random runs of 50 batches each sorted by length (less padding, the
    order of batches still random)."""
    generator = torch.Generator().manual_seed(opt.seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist()
    if not (opt.group_by_length and lengths):
        return order
    mega = MEGABATCH_FACTOR * opt.batch_size
    grouped = []
    for start in range(0, n_rows, mega):
        grouped += sorted(order[start : start + mega], key=lambda i: -lengths[i])
    batches = [grouped[i : i + opt.batch_size] for i in range(0, n_rows, opt.batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffle for i in batches[b]]


def batch_rows(n_rows: int, opt: OptimSettings, step: int, lengths: list[int] | None) -> list[int]:
    """Row indices of optimizer step ``step`` (0-based)."""
    per_epoch = math.ceil(n_rows / opt.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = batch_order(n_rows, opt, epoch, lengths)
    return order[position * opt.batch_size : (position + 1) * opt.batch_size]


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, step: int, model, optimizer) -> Path:
    """``run_dir/checkpoint-<step>``: weights (safetensors), optimizer state and RNG state,
    then the manifest; renamed into place whole. Earlier checkpoints are removed after."""
    from safetensors.torch import save_file

    final = run_dir / f"{CHECKPOINT_PREFIX}{step}"
    with atomic_output_dir(final) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
        save_file(_untied(state), tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        write_manifest(tmp, MANIFEST, step=step)
    for old in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _untied(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings): store each once."""
    seen, out = {}, {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.numel())
        out[name] = tensor.clone() if key in seen else tensor
        seen.setdefault(key, name)
    return out


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when every file validates."""
    try:
        int(read_manifest(path, MANIFEST)["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"no valid {MANIFEST} ({type(err).__name__}: {err})"
    return manifest_problem(path, MANIFEST)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``; incomplete ones are removed, named in a
    warning, so a rerun never trips over them."""
    found = []
    for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        problem = checkpoint_problem(path) if suffix.isdigit() else "not a checkpoint name"
        if problem:
            log.warning("discarding checkpoint %s: %s", path, problem)
            shutil.rmtree(path, ignore_errors=True)
        else:
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def load_checkpoint(path: Path, model, optimizer) -> int:
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    unwrap(model).load_state_dict(state, strict=False)  # tied weights are stored once
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    return int(json.loads((path / MANIFEST).read_text())["step"])


def unwrap(model):
    return getattr(model, "module", model)


def run_fingerprint(model, rows: Sequence[dict], opt: OptimSettings, record: dict) -> str:
    """A digest of what a checkpoint must share with this run to be resumed: the settings, the
    training rows and the initial weights. Checkpoints live under ``run-<digest>``, so a rerun
    after a config or data change starts fresh instead of continuing another run's optimizer
    (and every process computes the same directory without coordination)."""
    digest = hashlib.sha256(json.dumps({"opt": asdict(opt), "record": record}, sort_keys=True, default=str).encode())
    for row in rows:
        for key in sorted(row):
            digest.update(key.encode())
            digest.update(np.asarray(row[key]).tobytes())
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- metrics log


class MetricsLog:
    """One JSON line per optimizer step. On resume it is cut back to the checkpoint's step; a
    torn or unreadable line (a kill mid-write, bytes that are not UTF-8 JSON) is dropped with a
    warning."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = []
        if resume_step and path.exists():
            for number, raw in enumerate(path.read_bytes().splitlines(), 1):
                try:
                    line = raw.decode("utf-8")
                    record = json.loads(line)  # UnicodeDecodeError is a ValueError too
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    log.warning("dropping a torn line %d of %s", number, path)
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        write_text(path, "".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- faults


class SignalFlag:
    """Remembers a SIGTERM (a SLURM time limit or ``scancel`` warns before it kills) so the loop
    finishes the step, checkpoints and stops. Under torchrun the processes may see it at
    different steps, or only some of them: the loop decides on every process together
    (:func:`agree`)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


NONFINITE_FAULT = "NONFINITE"  # DPPO_FAULT_SIGNAL's value that makes a loss NaN instead of signalling


def _fault(run: str) -> tuple[int, str] | None:
    """(step, signal name) of the fault the environment asks of this process in ``run``, or None."""
    if os.environ.get("DPPO_FAULT_RUN") != run:
        return None
    rank = os.environ.get("DPPO_FAULT_RANK")
    if rank is not None and int(rank) != world()[0]:
        return None
    return int(os.environ["DPPO_FAULT_AT_STEP"]), os.environ.get("DPPO_FAULT_SIGNAL", "SIGKILL")


def injected_fault(run: str) -> Callable[[int], None]:
    """Test hook: at the end of optimizer step ``DPPO_FAULT_AT_STEP`` this process sends itself
    ``DPPO_FAULT_SIGNAL`` (SIGKILL by default), as a preemption or a time limit would, when
    ``DPPO_FAULT_RUN`` names this run (and ``DPPO_FAULT_RANK``, when set, this process's rank);
    SIGSTOP freezes it for an external kill. ``NONFINITE``: see :func:`injected_nonfinite`."""
    fault = _fault(run)
    if fault is None or fault[1] == NONFINITE_FAULT:
        return lambda step: None
    at, sig = fault[0], getattr(signal, fault[1])
    return lambda step: os.kill(os.getpid(), sig) if step == at else None


def injected_nonfinite(run: str) -> Callable[[int], bool]:
    """Test hook: with ``DPPO_FAULT_SIGNAL=NONFINITE`` (and the other variables of
    :func:`injected_fault`), whether this process's first micro batch of optimizer step
    ``step`` (1-based) gets a NaN loss."""
    fault = _fault(run)
    if fault is None or fault[1] != NONFINITE_FAULT:
        return lambda step: False
    return lambda step: step == fault[0]


def agree(nonfinite: bool, stop: bool) -> tuple[int | None, bool]:
    """What every process does with this step, decided together with one all-reduce of two
    numbers (before the gradients' all-reduce, which a process that skips or stops alone would
    leave the others waiting in): (the highest rank whose loss is not finite, or None; whether
    any process was asked to stop)."""
    rank, size = world()
    if size == 1:
        return (rank if nonfinite else None), stop
    flags = torch.tensor([float(rank + 1) if nonfinite else 0.0, float(stop)], device=device())
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, stop_any = (int(v) for v in flags.tolist())
    return (bad - 1 if bad else None), bool(stop_any)


# ----------------------------------------------------------------------------- the loop


def _optimizer(model, opt: OptimSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and norm weights
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=opt.lr, betas=(0.9, 0.999), eps=1e-8)


def _check_finite_gradients(model, step: int, run: str) -> None:
    for name, param in model.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            raise NonFiniteError(f"non-finite gradient of {name} at step {step} of {run!r}")


FINAL = "final"  # a run directory's finished model
METRICS = "metrics.jsonl"  # ... and its per-step metrics


def finished_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` does not hold a finished run, or None: its model (written atomically,
    last) must match its manifest, and its metrics exist."""
    if not (run_dir / METRICS).is_file():
        return f"no {METRICS}"
    return manifest_problem(run_dir / FINAL, MODEL_MANIFEST, exact=True)


def finished_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run whose model matches its manifest."""
    return finished_problem(run_dir) is None


def train(model, tokenizer, rows: Sequence[dict], task: Task, opt: OptimSettings, checkpoint_dir: str | Path,
          record: dict, on_nonfinite: str = "stop") -> Path:
    """Train ``model`` on ``rows`` with ``task``'s loss and return the run directory holding the
    finished model (``final/``, with ``record``) and the per-step metrics (``metrics.jsonl``).

    The run directory is ``checkpoint_dir/run-<fingerprint>``: a rerun of the same run resumes
    from its newest complete checkpoint (or returns at once when it had finished); runs of
    other settings, rows or initial weights there are removed, named in a warning. The caller
    publishes the results (the rule's outputs live elsewhere: Snakemake deletes a failed job's
    outputs). ``on_nonfinite``: "stop" raises on a non-finite loss, "skip" drops that batch
    (counted in the record). Under torchrun a non-finite loss or a SIGTERM on any process makes
    every process skip, stop or checkpoint at the same step (:func:`agree`)."""
    init_distributed()
    rank, size = world()
    run = record.get("experiment", record.get("stage", "run"))
    checkpoint_dir = Path(checkpoint_dir)
    run_dir = checkpoint_dir / f"run-{run_fingerprint(model, rows, opt, record)}"
    for stale in sorted(p for p in checkpoint_dir.glob("run-*") if p != run_dir):
        if rank == 0:
            log.warning("discarding %s: a run with other settings, data or initial weights", stale)
            shutil.rmtree(stale, ignore_errors=True)
    unfinished = finished_problem(run_dir)
    if unfinished is None:
        log.info("%s: already finished in %s (a killed job's earlier part), not trained again", run, run_dir)
        return run_dir
    if (run_dir / FINAL).exists() and rank == 0:  # damaged after it was saved: trained again
        log.warning("discarding the finished model %s: %s", run_dir / FINAL, unfinished)
        shutil.rmtree(run_dir / FINAL, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in cleanup_partial_outputs(run_dir):
        log.warning("removed %s, left by a killed write", leftover)

    model.to(device())
    if opt.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = _optimizer(model, opt)
    checkpoint = last_checkpoint(run_dir)
    start = load_checkpoint(checkpoint, model, optimizer) if checkpoint else 0
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    metrics = MetricsLog(run_dir / METRICS, start) if rank == 0 else None
    fields = {"seed": record["seed"]} if "seed" in record else {}

    total = total_steps(opt, len(rows))
    if not any(lr_factor(opt, step, total) > 0 for step in range(total)):
        # Linear warm-up starts at 0 (as in transformers): a run no longer than its warm-up
        # never changes the weights.
        log.warning("%s: every one of its %d update(s) has learning rate 0 (warm-up ratio %g); the model will "
                    "not change", run, total, opt.warmup_ratio)
    per_process, micro = micro_batches(opt)
    lengths = task.lengths() if opt.group_by_length else None
    use_bf16 = opt.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    fault, poisoned = injected_fault(run), injected_nonfinite(run)
    skipped = 0
    params = [p for p in model.parameters() if p.requires_grad]
    if size > 1:  # every process starts from rank 0's weights
        for p in unwrap(model).state_dict().values():
            torch.distributed.broadcast(p, 0)
    with SignalFlag() as terminate, tqdm(total=total, initial=start, desc=f"train {run}", disable=rank != 0) as bar:
        for step in range(start, total):
            batch = batch_rows(len(rows), opt, step, lengths)
            mine = batch[rank * per_process : (rank + 1) * per_process]
            total_weight = torch.tensor([float(task.weight([rows[i] for i in mine]))], device=device())
            all_reduce_sum([total_weight])  # the whole batch's units, over every process
            logged: dict[str, torch.Tensor] = {}
            message = None  # why this process's loss is not finite
            where = f" on process {rank}" if size > 1 else ""
            for begin in range(0, len(mine), micro):
                chunk = [rows[i] for i in mine[begin : begin + micro]]
                with torch.autocast(device().type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, parts = task.loss(model, chunk)
                if begin == 0 and poisoned(step + 1):
                    loss = loss * float("nan")
                if not torch.isfinite(loss):
                    message = (f"non-finite loss at step {step + 1} of {run!r}{where}: "
                               + ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items()))
                    break
                share = task.weight(chunk) / total_weight  # the micro losses add up to the batch mean
                (loss * share).backward()
                for key, value in {"loss": loss.detach(), **parts}.items():
                    logged[key] = logged.get(key, 0.0) + value.detach().float() * share
            # Every process skips, stops or checkpoints at the same step (SIGTERM: single-process
            # runs act on it at the end of the step, below).
            bad, stop = agree(message is not None, terminate.raised and size > 1)
            if bad is not None:
                message = message or f"non-finite loss at step {step + 1} of {run!r} on process {bad} (its log names the parts)"
                if on_nonfinite == "stop":
                    raise NonFiniteError(message)
            if stop:  # before this step's update: the state of `step` updates is checkpointed
                optimizer.zero_grad(set_to_none=True)
                _terminate(run_dir, step, start, model, optimizer)
            if bad is not None:  # skip the batch on every process alike (its gradients are dropped)
                log.warning("%s; skipping the batch%s", message, " on every process" if size > 1 else "")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                bar.update(1)
                continue
            names = sorted(logged)
            values = torch.stack([logged[k].reshape(()) for k in names])
            if size > 1:
                for p in params:  # the same flat buffer on every process
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            all_reduce_sum([p.grad for p in params if p.grad is not None] + [values])
            _check_finite_gradients(model, step + 1, run)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm))
            lr = opt.lr * lr_factor(opt, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if metrics is not None:
                parts = dict(zip(names, values.tolist()))
                entry = {"step": done, **fields, "epoch": done / math.ceil(len(rows) / opt.batch_size), "lr": lr,
                         "grad_norm": grad_norm, **parts, **task.step_metrics(model, done, total)}
                metrics.append(entry)
                bar.set_postfix(loss=f"{parts['loss']:.4f}")
            bar.update(1)
            fault(done)
            if terminate.raised and size == 1:
                _terminate(run_dir, done, start, model, optimizer)
            if done % opt.save_steps == 0 and done < total and rank == 0:
                save_checkpoint(run_dir, done, model, optimizer)
    if rank == 0:
        save_model(model, tokenizer, run_dir / FINAL, {**record, "steps": total, "skipped_steps": skipped,
                                                       "resumed_from": str(checkpoint) if checkpoint else None})
        for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    if size > 1:
        torch.distributed.barrier()
    return run_dir


def _terminate(run_dir: Path, done: int, start: int, model, optimizer) -> None:
    """Checkpoint the state after ``done`` updates (unless a checkpoint of it exists) and stop
    every process (rank 0 saves, the others wait for it)."""
    rank, size = world()
    saved = done == start or (run_dir / f"{CHECKPOINT_PREFIX}{done}").is_dir()
    if rank == 0 and not saved:
        save_checkpoint(run_dir, done, model, optimizer)
    if size > 1:
        torch.distributed.barrier()
    if done == 0:
        raise TrainingTerminated("terminated (SIGTERM) before the first step; nothing to save, rerun the job")
    raise TrainingTerminated(f"terminated (SIGTERM) at step {done}; checkpoint saved, rerun the job to resume")


def save_model(model, tokenizer, out_dir: str | Path, record: dict) -> None:
    """Weights (safetensors), tokenizer, generation config and the training record, then the
    manifest of them all, written atomically; a model with non-finite weights is never saved."""
    model = unwrap(model)
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteError(f"parameter {name} is not finite; refusing to save the model")
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_text(tmp / TRAINING_RECORD, json.dumps(record, indent=2))
        write_manifest(tmp, MODEL_MANIFEST)


def publish_model(run_dir: Path, dest: Path, output: str) -> None:
    """Copy ``run_dir``'s finished model into ``dest`` (inside the caller's atomic output
    directory), check the copy against the manifest :func:`save_model` wrote, and record in it
    where the rule's output is relative to ``dest`` (``"."``, or ``".."`` for an experiment's
    ``seed-<s>/``): a load that finds the model damaged names the ``snakemake --forcerun`` that
    rebuilds it (:func:`dppo.runtime.io.verify_model`). Every file is read once more, by the check."""
    shutil.copytree(run_dir / FINAL, dest, dirs_exist_ok=True)
    problem = manifest_problem(dest, MODEL_MANIFEST, exact=True)
    if problem:
        raise DamagedModelError(f"{run_dir / FINAL}: {problem} (changed while it was published); rerun the job")
    manifest = read_manifest(dest, MODEL_MANIFEST)
    write_text(dest / MODEL_MANIFEST, json.dumps({"output": output, "files": manifest["files"]}, indent=1))
