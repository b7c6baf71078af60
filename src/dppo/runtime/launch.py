"""Multi-GPU launch: a training job that holds several GPUs (one SLURM task) runs as one
process per GPU under ``torchrun``; :func:`dppo.train.loop.train` then wraps the model for data
parallelism (:mod:`dppo.train.distributed`), and the effective batch size stays the configured
one (:func:`dppo.train.schedule.micro_batches` gives each process its share).

A job function takes JSON-serialisable keyword arguments, so the same call runs in-process (CPU,
one GPU) or under torchrun (which re-imports it by its ``"module:function"`` name).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile

from dppo.runtime import warm

log = logging.getLogger(__name__)


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_rule_job(snakemake, target: str, kwargs: dict, n_gpus: int = 0, one_process: bool = False) -> None:
    """A workflow script's whole body: ``target`` ("module:function") called with ``kwargs`` inside
    ``dppo.runtime.stage.stage``; on a local CPU in a warm worker (dppo.runtime.warm), which has imported the
    target's module already, else in this process. ``one_process``: a job that never runs under
    torchrun (generation, the reference log-prob caches) runs in one process whatever GPUs it holds."""
    from dppo.runtime.stage import process_start_time

    if one_process:
        n_gpus = min(n_gpus, 1)

    job = {"rule": snakemake.rule, "log": str(snakemake.log[0]), "threads": int(snakemake.threads)}
    if warm.usable(n_gpus):
        request = {"target": target, "kwargs": kwargs, "job": job, "n_gpus": n_gpus, "started": process_start_time()}
        try:
            preload = warm.job_preload(target.partition(":")[0])
            warm.exit_with(warm.submit("dppo.runtime.launch:run_in_stage", request, preload=preload))
        except warm.Unavailable as why:
            log.warning("no warm worker could take the job (%s); running it in this process", why)
    run_in_stage(target, kwargs, job, n_gpus)


def run_in_stage(target: str, kwargs: dict, job: dict, n_gpus: int = 0, started: float | None = None) -> None:
    """``target(**kwargs)`` inside the rule's stage; the imports (the target's module and what
    dppo.runtime.warm.PRELOAD lists for it) come first, so they count as start-up."""
    from types import SimpleNamespace

    from dppo.runtime.stage import stage

    warm.import_preloads(target.partition(":")[0])
    function = _resolve(target)
    with stage(SimpleNamespace(rule=job["rule"], log=[job["log"]], threads=job["threads"]), started=started):
        if started is not None:
            log.info("running in a warm worker's child (pid %d, worker %d)", os.getpid(), os.getppid())
        run_job(function, kwargs, n_gpus)


def run_job(function, kwargs: dict, n_gpus: int = 0) -> None:
    """Call ``function(**kwargs)`` here, or under torchrun with one process per GPU when the job
    holds more than one GPU and is not already a torchrun worker."""
    if n_gpus <= 1 or "LOCAL_RANK" in os.environ:
        function(**kwargs)
        return
    target = f"{function.__module__}:{function.__name__}"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"target": target, "kwargs": kwargs}, fh)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpus}",
               "-m", "dppo.runtime.launch", fh.name]
    log.info("launching %s on %d GPUs: %s", target, n_gpus, " ".join(command))
    try:
        subprocess.run(command, check=True)
    finally:
        os.unlink(fh.name)


if __name__ == "__main__":
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank" + os.environ.get("RANK", "0") + " %(message)s")
    import torch.distributed

    try:
        _resolve(spec["target"])(**spec["kwargs"])
    finally:
        # Destroyed while the interpreter is whole: gloo's worker threads left to the interpreter's
        # teardown abort the process now and then ("terminate called without an active
        # exception", pytorch/pytorch#190489), failing a job that had finished.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
