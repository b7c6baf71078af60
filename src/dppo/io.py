"""Output and loading helpers shared by every stage.

Outputs appear atomically (complete or absent): they are written under a temporary name in
the same directory and renamed into place, so a killed job never leaves a half-written file
or model directory that a rerun would take as complete. Models load only from safetensors,
without remote code unless the config asks for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class UnsafeCheckpointError(RuntimeError):
    """A model directory holds only pickle weights (pytorch_model.bin / *.pt)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


PARTIAL_MARK = ".tmp-"  # in the names of atomic outputs still being written: .<name>.tmp-XXXX


def cleanup_partial_outputs(directory: str | Path, name: str = "*") -> list[Path]:
    """Remove what a killed writer left in ``directory``: the hidden ``.<name>.tmp-*`` files
    and directories of :func:`atomic_output_file` / :func:`atomic_output_dir` (never taken as
    outputs, but they would pile up). ``name`` limits it to one output's leftovers, for a
    directory other jobs write to at the same time. Returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(f".{name}{PARTIAL_MARK}*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def share_by_umask(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the modes a plain write would:
    mkstemp/mkdtemp (and safetensors) create private files (0600/0700), but on a shared
    cluster the group must read the results."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _clean_leftovers(path: Path) -> None:
    """What a killed write of this same output left (only this job writes it)."""
    for leftover in cleanup_partial_outputs(path.parent, path.name):
        log.warning("removed %s, left by a killed write of %s", leftover, path)


LOW_SPACE_BYTES = 16 << 20
DISK_FULL_NOTE = "the disk is probably full"


def _note_if_disk_full(err: BaseException, where: Path) -> None:
    """Some writers fail on a full disk without saying so (torch.save: "unexpected pos ...",
    "iostream error"): name the cause when the filesystem is (nearly) full. Once per error:
    nested writers (a manifest inside a checkpoint directory) see the same one."""
    if any(DISK_FULL_NOTE in note for note in getattr(err, "__notes__", ())):
        return
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(where).free
        if free < LOW_SPACE_BYTES:
            err.add_note(f"{where}: {free // 1024} KiB free on this filesystem: {DISK_FULL_NOTE} "
                         "(nothing was written; free space and rerun)")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path):
    """Yield a temporary directory beside ``out_dir``; on success it replaces ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        share_by_umask(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except Exception as err:
        _note_if_disk_full(err, out_dir.parent)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(path: str | Path):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        share_by_umask(Path(tmp))
        os.replace(tmp, path)
    except Exception as err:
        _note_if_disk_full(err, path.parent)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_parquet(path: str | Path, frame) -> None:
    with atomic_output_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_text(path: str | Path, text: str) -> None:
    with atomic_output_file(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, *paths: str | Path, dpi: int = 200) -> None:
    """Write ``fig`` to every path (the format from its suffix: vector PDF, PNG at ``dpi``),
    each atomically, then close it."""
    import matplotlib.pyplot as plt

    for path in paths:
        with atomic_output_file(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def check_safetensors(model_dir: str | Path) -> None:
    """Refuse a local model directory whose weights exist only as pickle files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) enforces it there
    if any(model_dir.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickles:
        raise UnsafeCheckpointError(
            f"{model_dir} holds only pickle weights ({', '.join(pickles)}); loading them can run "
            "arbitrary code. Convert the checkpoint to safetensors (save_pretrained("
            "safe_serialization=True)) and rerun."
        )
    raise FileNotFoundError(f"no model weights (*.safetensors) in {model_dir}")


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 over a model directory's safetensors files: which weights a run started from."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_pretrained(auto_class, model_dir: str | Path, trust_remote_code: bool = False, **kwargs):
    """``auto_class.from_pretrained`` from safetensors only (never pickle), without remote code
    unless asked for."""
    check_safetensors(model_dir)
    return auto_class.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)


def load_causal_lm(model_dir: str | Path, trust_remote_code: bool = False, dtype=None, device=None):
    """AutoModelForCausalLM from safetensors only."""
    from transformers import AutoModelForCausalLM

    model = load_pretrained(AutoModelForCausalLM, model_dir, trust_remote_code, **({"dtype": dtype} if dtype is not None else {}))
    return model.to(device) if device is not None else model


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def pad_token_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (base models such as
    Qwen2.5 may define no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
