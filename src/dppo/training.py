"""What SFT and preference training share: Trainer arguments, checkpoint resumption, the
per-step metrics log, and the atomic save of the final model directory.

Both stages use ``transformers.Trainer`` so gradient accumulation, checkpointing, bf16 and
multi-GPU launches (``accelerate launch`` / ``torchrun``) come from a well-kept trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dppo.io import atomic_output_dir, atomic_output_file
from dppo.settings import OptimSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    """Where a training job writes: the final model directory and the per-step metrics (the
    rule's outputs), and the checkpoints a killed run resumes from (not an output: Snakemake
    deletes a failed job's outputs)."""

    out_dir: str
    metrics_file: str
    checkpoint_dir: str


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(opt: OptimSettings) -> tuple[int, int]:
    """(per-device micro batch, gradient-accumulation steps) that keep the effective batch
    equal to ``opt.batch_size`` whatever the number of processes."""
    per_device = math.ceil(opt.batch_size / world_size())
    micro = min(opt.micro_batch_size or per_device, per_device)
    accum = math.ceil(per_device / micro)
    if micro * accum * world_size() != opt.batch_size:
        raise ValueError(
            f"batch_size {opt.batch_size} is not divisible into {world_size()} devices x micro "
            f"batches of {micro}; pick batch_size / micro_batch_size that divide evenly"
        )
    return micro, accum


def training_arguments(opt: OptimSettings, checkpoint_dir: str | Path, **overrides) -> TrainingArguments:
    micro, accum = accumulation_steps(opt)
    use_bf16 = opt.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        learning_rate=opt.lr,
        num_train_epochs=opt.epochs,
        max_steps=opt.max_steps,
        warmup_steps=opt.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=opt.weight_decay,
        lr_scheduler_type=opt.scheduler,
        max_grad_norm=opt.max_grad_norm,
        logging_steps=1,
        save_strategy="steps",
        save_steps=opt.save_steps,
        save_total_limit=1,
        report_to=[],
        seed=opt.seed,
        data_seed=opt.seed,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        activation_checkpointing=opt.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if opt.group_by_length else "random",
        disable_tqdm=False,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest complete checkpoint to resume from after a kill (SLURM time limit,
    preemption), or None to start fresh.

    Trainer writes a checkpoint in place and ``trainer_state.json`` last, so a job killed while
    saving leaves a newer directory without it; ``get_last_checkpoint`` would pick that one and
    the resume would silently restart the step count with a fresh optimizer."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        path for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.split("-")[-1].isdigit() and (path / TRAINER_STATE_NAME).is_file()
    ]
    if not complete:
        return None
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1])))


class TrainingTerminated(RuntimeError):
    """SIGTERM stopped training after a checkpoint; rerunning the job resumes from it."""


class SaveOnTerminate(TrainerCallback):
    """On SIGTERM (a SLURM time limit or ``scancel`` warns before it kills) finish the current
    step, save a checkpoint and stop, so the rerun loses no step. Single-process runs only:
    under torchrun the ranks could see the signal at different steps and wait on each other."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        signal.signal(signal.SIGTERM, self._previous)


class FaultInjection(TrainerCallback):
    """Test hook: at the end of optimizer step ``step`` this process sends itself ``signal_name``,
    as a SLURM time limit (SIGTERM) or a preemption (SIGKILL) would; SIGSTOP freezes it for an
    external kill. Active only when the environment names this run (``from_env``)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step = step
        self.signal = getattr(signal, signal_name)

    @classmethod
    def from_env(cls, run: str) -> FaultInjection | None:
        if os.environ.get("DPPO_FAULT_RUN") != run:
            return None
        return cls(int(os.environ["DPPO_FAULT_AT_STEP"]), os.environ.get("DPPO_FAULT_SIGNAL", "SIGKILL"))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class JsonlMetricsCallback(TrainerCallback):
    """Appends every training log (one per optimizer step) to a JSONL file.

    On resume the file is cut back to the checkpoint's step first, so a rerun never holds
    duplicated or orphaned steps."""

    KEEP = ("epoch", "learning_rate", "grad_norm")

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        with atomic_output_file(self.path) as tmp:  # a kill while cutting back loses no earlier step
            tmp.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step}
        for key, value in logs.items():
            if key == "learning_rate":
                key = "lr"
            record[key] = float(value) if isinstance(value, (int, float)) else value
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def resume_step(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def run_fingerprint(model, rows: list[dict], opt: OptimSettings, extra: dict) -> str:
    """A digest of what a checkpoint must share with this run to be resumed: the settings, the
    training rows and the initial weights. Checkpoints live under ``run-<digest>``, so a rerun
    after a config or data change starts fresh instead of continuing another run's optimizer
    (and every torchrun rank computes the same directory without coordination)."""
    digest = hashlib.sha256(json.dumps({"opt": asdict(opt), "extra": extra}, sort_keys=True, default=str).encode())
    for row in rows:
        for key in sorted(row):
            digest.update(key.encode())
            digest.update(np.asarray(row[key]).tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_and_save(trainer_cls, *, model, tokenizer, rows: list[dict], collator, opt: OptimSettings, paths: RunPaths,
                 record: dict, callbacks=(), **trainer_kwargs):
    """Train with ``trainer_cls`` (a ``Trainer``), resuming from the newest checkpoint of a killed
    run, then save the model (with ``record`` beside it) and the per-step metrics atomically and
    drop the checkpoints.

    The live metrics log sits beside the checkpoints, not at the declared output, because
    Snakemake deletes a failed job's outputs and the resumed run must keep the earlier steps."""
    checkpoint_dir = Path(paths.checkpoint_dir)
    run_dir = checkpoint_dir / f"run-{run_fingerprint(model, rows, opt, record)}"
    stale = sorted(p.name for p in checkpoint_dir.glob("run-*") if p != run_dir)
    if stale:
        log.warning("ignoring checkpoints of runs with other settings, data or initial weights: %s", stale)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    live_metrics = run_dir / "metrics.jsonl"
    fault = FaultInjection.from_env(record.get("experiment", record.get("stage", "")))
    terminate = SaveOnTerminate() if world_size() == 1 else None
    callbacks = [*callbacks, *(c for c in (fault, terminate) if c)]  # the fault first: its SIGTERM is seen at once
    trainer = trainer_cls(
        model=model,
        args=training_arguments(opt, run_dir),
        train_dataset=ListDataset(rows),
        data_collator=collator,
        callbacks=[JsonlMetricsCallback(live_metrics, resume_step(checkpoint)), *callbacks],
        **trainer_kwargs,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    if terminate and terminate.requested:  # never save a model that stopped early
        raise TrainingTerminated(f"terminated (SIGTERM) at step {trainer.state.global_step}; checkpoint saved, "
                                 "rerun the job to resume")
    if trainer.is_world_process_zero():  # under torchrun every rank holds the same weights
        save_final_model(trainer, tokenizer, paths.out_dir, extra={**record, "steps": trainer.state.global_step,
                                                                    "resumed_from": checkpoint})
        with atomic_output_file(paths.metrics_file) as tmp:
            shutil.copyfile(live_metrics, tmp)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return trainer


def save_final_model(trainer, tokenizer, out_dir: str | Path, extra: dict | None = None) -> None:
    """Save weights (safetensors), tokenizer and generation config atomically, refusing to
    write a model with non-finite weights."""
    model = trainer.model
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"parameter {name} is not finite; refusing to save the model")
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "dppo_training.json").write_text(json.dumps(extra, indent=2))
