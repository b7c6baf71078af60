"""A run's finished model: saved atomically with its manifest (``final/``), recognised on a
rerun, and published to the rule's outputs (the models, the metrics), checked against the
manifest on the way."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dppo.runtime.io import (
    MODEL_MANIFEST,
    TRAINING_RECORD,
    DamagedModelError,
    atomic_output_dir,
    atomic_output_file,
    manifest_problem,
    read_manifest,
    write_manifest,
    write_text,
)
from dppo.train.distributed import is_sharded, model_state, unwrapped, world
from dppo.train.errors import NonFiniteError

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


def save_model(model, tokenizer, out_dir: str | Path, record: dict) -> None:
    """Weights (safetensors), tokenizer, generation config and the training record, then the
    manifest of them all, written atomically; a model with non-finite weights is never saved.
    Every process calls it (a sharded model's weights are gathered); rank 0 writes."""
    state = model_state(model) if is_sharded(model) else None
    if world()[0] != 0:
        return
    model = unwrapped(model)
    if state is not None:  # a tied weight once, under its first name, as save_pretrained does
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
        state = {name: tensor for name, tensor in state.items() if name not in tied}
    for name, weight in state.items() if state is not None else model.named_parameters():
        if weight.is_floating_point() and not torch.isfinite(weight).all():
            raise NonFiniteError(f"parameter {name} is not finite; refusing to save the model")
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
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


def publish_runs(runs: dict[str, Path], out_dir: str | Path, metrics_file: str | Path,
                 checkpoint_dir: str | Path, metrics: bytes | None = None) -> None:
    """A training job's outputs from its finished runs (``runs``: the model's subdirectory of
    ``out_dir``, ``""`` for ``out_dir`` itself, to its run directory): the models, then every
    run's metrics in that order in one file (or ``metrics``, when the caller composed them), then
    the checkpoints are dropped. Rank 0 only."""
    if world()[0] != 0:
        return
    with atomic_output_dir(out_dir) as tmp:
        for sub, run_dir in runs.items():
            dest = tmp / sub
            publish_model(run_dir, dest, output=os.path.relpath(tmp, dest))
    if metrics is None:
        metrics = b"".join((run_dir / METRICS).read_bytes() for run_dir in runs.values())
    with atomic_output_file(metrics_file) as tmp:
        tmp.write_bytes(metrics)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
