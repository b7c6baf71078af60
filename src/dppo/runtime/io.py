"""Output and loading helpers shared by every stage.

Outputs appear atomically (complete or absent): they are written under a temporary name in
the same directory and renamed into place, so a killed job never leaves a half-written file
or model directory that a rerun would take as complete. Models load only from safetensors,
without remote code unless the config asks for it.

Manifests: a checkpoint and a finished model carry a JSON manifest with every file's size and
SHA-256 (:func:`write_manifest`, :func:`manifest_problem`). A model directory this pipeline
published (``dppo_manifest.json``) is checked against it on every load, and a mismatch is an
error naming the directory, the file and the ``snakemake --forcerun`` that rebuilds it.
Directories without one (a hub model, the tiny init model, a test fixture) were not published
here and load as before, unless a ``dppo_training.json`` says this pipeline trained them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class UnsafeCheckpointError(RuntimeError):
    """A model directory holds only pickle weights (pytorch_model.bin / *.pt)."""


class DamagedModelError(RuntimeError):
    """A model directory's files differ from its manifest, or its safetensors are unreadable."""


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


# ----------------------------------------------------------------------------- manifests

MODEL_MANIFEST = "dppo_manifest.json"  # a finished model's manifest, written when its job publishes it
TRAINING_RECORD = "dppo_training.json"  # ... and its training record: the pipeline trained it


def files_sha256(paths) -> str:
    """SHA-256 of the files' bytes one after the other, read in blocks of 1 MiB (model weights
    need not fit in memory)."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return files_sha256([path])


def _listed_files(directory: Path, name: str) -> list[Path]:
    """What a manifest covers: the directory's files but itself and hidden ones (the atomic
    writers' ``.<name>.tmp-*``, an NFS ``.nfs*``)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name != name and not p.name.startswith("."))


def write_manifest(directory: str | Path, name: str, **fields) -> dict:
    """Write ``directory/name``: ``fields`` then every file's size and SHA-256; returns it."""
    directory = Path(directory)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in _listed_files(directory, name)}
    manifest = {**fields, "files": files}
    write_text(directory / name, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(directory: str | Path, name: str) -> dict:
    """``directory/name`` (raises OSError, ValueError, KeyError, TypeError or AttributeError
    when it is missing or malformed)."""
    manifest = json.loads((Path(directory) / name).read_text())
    for meta in manifest["files"].values():
        int(meta["bytes"]), str(meta["sha256"])
    return manifest


def manifest_problem(directory: str | Path, name: str, exact: bool = False) -> str | None:
    """Why ``directory``'s files differ from its manifest ``name`` (the first file found), or
    None. Sizes are compared first (a truncated file costs no hashing); ``exact``: a file the
    manifest does not list is a difference too."""
    directory = Path(directory)
    try:
        files = read_manifest(directory, name)["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"no valid {name} ({type(err).__name__}: {err})"
    for file, meta in files.items():
        path = directory / file
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            return f"{file} is missing"
        if size != meta["bytes"]:
            return f"{file} has {size} bytes, its manifest says {meta['bytes']} (truncated or changed)"
    if exact:
        extra = [p.name for p in _listed_files(directory, name) if p.name not in files]
        if extra:
            return f"{extra[0]} is not in its manifest (added after it was written)"
    for file, meta in files.items():
        try:
            if file_sha256(directory / file) != meta["sha256"]:
                return f"{file} does not match its manifest (SHA-256 differs: changed or damaged)"
        except OSError as err:  # removed meanwhile, or unreadable
            return f"{file} cannot be read ({type(err).__name__}: {err})"
    return None


def rebuild_command(model_dir: str | Path) -> str:
    """The command that rebuilds a published model: ``snakemake --forcerun`` of the rule's
    output, which the manifest records relative to the model (``.``, or ``..`` for an
    experiment's ``seed-<s>/``)."""
    model_dir = Path(model_dir)
    try:
        output = json.loads((model_dir / MODEL_MANIFEST).read_text())["output"]
    except (OSError, ValueError, KeyError, TypeError):
        output = None
    if output not in (".", ".."):  # no readable manifest: the pipeline's layout says
        output = ".." if model_dir.name.startswith("seed-") else "."
    target = Path(os.path.normpath(model_dir / output))
    with contextlib.suppress(ValueError):
        target = target.relative_to(Path.cwd()) if target.is_absolute() else target
    return f"snakemake --forcerun {target}"


_VERIFIED: set[tuple] = set()  # (directory, every file's stat) already checked in this process


def _stat_key(model_dir: Path) -> tuple:
    stats = sorted((p.name, p.stat()) for p in model_dir.iterdir())
    return (str(model_dir.resolve()), *((name, s.st_size, s.st_mtime_ns, s.st_ino) for name, s in stats))


def verify_model(model_dir: str | Path) -> None:
    """Check a local model directory this pipeline published against its manifest; raise
    :class:`DamagedModelError` naming the directory, the first file that differs and the
    command that rebuilds it. Without a manifest the directory was not published here (a hub
    model, the tiny init model, a fixture) and passes, unless its ``dppo_training.json`` says
    this pipeline trained it: then the manifest was lost. Each file is hashed once per load: a
    directory that passed is not hashed again while none of its files changes (size, mtime,
    inode), so a job's tokenizer and model loads read the weights once."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return  # a hub id
    if not (model_dir / MODEL_MANIFEST).exists():
        if (model_dir / TRAINING_RECORD).exists():
            raise DamagedModelError(
                f"{model_dir}: no {MODEL_MANIFEST}, but its {TRAINING_RECORD} says this pipeline trained it (the "
                f"manifest was removed, the model copied without it, or published before models carried one); "
                f"rebuild it with: "
                f"{rebuild_command(model_dir)}")
        return
    key = _stat_key(model_dir)
    if key in _VERIFIED:
        return
    problem = manifest_problem(model_dir, MODEL_MANIFEST, exact=True)
    if problem:
        raise DamagedModelError(f"{model_dir}: {problem}; the model was changed or damaged after its job published "
                                f"it. Rebuild it (and what depends on it) with: {rebuild_command(model_dir)}")
    _VERIFIED.add(key)


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, from its header alone (no tensor is read):
    a header past the end, a header that is not JSON, or a size other than the one the header
    describes (a truncated or extended file). None when it is consistent."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + length > size:
                return f"{path.name} is not a whole safetensors file (header of {length} bytes, file of {size})"
            header = json.loads(fh.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"{path.name} has an unreadable safetensors header ({type(err).__name__}: {err})"
    if 8 + length + end != size:
        return f"{path.name} has {size} bytes, its safetensors header describes {8 + length + end} (truncated or changed)"
    return None


def _pickles(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))


def _damaged_weights(model_dir: Path, problem: str) -> DamagedModelError:
    pickles = _pickles(model_dir)
    beside = f"; the pickle weights beside it ({', '.join(pickles)}) are never loaded" if pickles else ""
    rebuild = (f"rebuild it with: {rebuild_command(model_dir)}" if (model_dir / MODEL_MANIFEST).exists()
               else "replace the file with a good copy")
    return DamagedModelError(f"{model_dir}: {problem}{beside}; {rebuild}")


def check_safetensors(model_dir: str | Path) -> None:
    """Refuse a local model directory whose weights exist only as pickle files, one that differs
    from its manifest (:func:`verify_model`) and one whose safetensors files are torn (their
    headers alone are read), naming the directory and the file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) enforces it there
    verify_model(model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            raise _damaged_weights(model_dir, problem)
    if weights:
        return
    pickles = _pickles(model_dir)
    if pickles:
        raise UnsafeCheckpointError(
            f"{model_dir} holds only pickle weights ({', '.join(pickles)}); loading them can run "
            "arbitrary code. Convert the checkpoint to safetensors (save_pretrained("
            "safe_serialization=True)) and rerun."
        )
    raise FileNotFoundError(f"no model weights (*.safetensors) in {model_dir}")


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 over a model directory's safetensors files: which weights a run started from
    (the other files, its manifest among them, do not count)."""
    return files_sha256(sorted(Path(model_dir).glob("*.safetensors")))


def load_pretrained(auto_class, model_dir: str | Path, trust_remote_code: bool = False, **kwargs):
    """``auto_class.from_pretrained`` from safetensors only (never pickle), without remote code
    unless asked for."""
    from safetensors import SafetensorError

    check_safetensors(model_dir)
    try:
        return auto_class.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code,
                                          **kwargs)
    except SafetensorError as err:  # it names no file: name the directory and its weights
        names = ", ".join(p.name for p in sorted(Path(model_dir).glob("*.safetensors"))) or "its weights"
        raise _damaged_weights(Path(model_dir), f"{names}: unreadable safetensors ({err})") from err


def load_causal_lm(model_dir: str | Path, trust_remote_code: bool = False, dtype=None, device=None):
    """AutoModelForCausalLM from safetensors only."""
    from transformers import AutoModelForCausalLM

    model = load_pretrained(AutoModelForCausalLM, model_dir, trust_remote_code, **({"dtype": dtype} if dtype is not None else {}))
    return model.to(device) if device is not None else model


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    verify_model(model_dir)
    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def pad_token_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (base models such as
    Qwen2.5 may define no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
