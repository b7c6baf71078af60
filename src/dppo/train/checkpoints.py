"""Checkpoints a killed run resumes from bit-identically, under a run directory named by what
they must share with the run that resumes them.

``<checkpoint_dir>/run-<fingerprint>/checkpoint-<step>/`` is written to a temporary directory and
renamed into place; a manifest with every file's size and SHA-256 is written last. A checkpoint
counts only when its manifest and every file validate; anything else is removed with a warning
naming it, so a kill at any moment never leaves a state that a rerun trips over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dppo.runtime.io import atomic_output_dir, manifest_problem, read_manifest, write_manifest
from dppo.settings import OptimSettings
from dppo.train.distributed import is_sharded, load_state, model_state, optimizer_state, world

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"


def save_checkpoint(run_dir: Path, step: int, model, optimizer) -> Path:
    """``run_dir/checkpoint-<step>``: weights (safetensors), optimizer state and RNG state, then
    the manifest; renamed into place whole. Earlier checkpoints are removed after. Every process
    calls it (a sharded model's state is gathered); rank 0 writes."""
    from safetensors.torch import save_file

    final = run_dir / f"{CHECKPOINT_PREFIX}{step}"
    if world()[0] != 0 and not is_sharded(model):
        return final
    weights, optim = model_state(model), optimizer_state(model, optimizer)
    if world()[0] != 0:
        return final
    with atomic_output_dir(final) as tmp:
        save_file(_untied(weights), tmp / "model.safetensors")
        torch.save(optim, tmp / "optimizer.pt")
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
    """Restore weights, optimizer and RNG state from ``path``; returns its step."""
    from safetensors.torch import load_file

    load_state(model, optimizer, load_file(path / "model.safetensors"),
               torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
    return int(json.loads((path / MANIFEST).read_text())["step"])


def run_fingerprint(model, rows: Sequence[dict], opt: OptimSettings, record: dict) -> str:
    """A digest of what a checkpoint must share with this run to be resumed: the settings, the
    training rows and the initial weights (of the model before it is wrapped). Checkpoints live
    under ``run-<digest>``, so a rerun after a config or data change starts fresh instead of
    continuing another run's optimizer (and every process computes the same directory without
    coordination)."""
    digest = hashlib.sha256(json.dumps({"opt": asdict(opt), "record": record}, sort_keys=True, default=str).encode())
    for row in rows:
        for key in sorted(row):
            digest.update(key.encode())
            digest.update(np.asarray(row[key]).tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
