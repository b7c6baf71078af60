"""Killed training jobs resume from their last checkpoint when the same Snakemake target is run
again, and end bit-identical to an uninterrupted run (CPU: dppo.train.loop restores the weights,
the optimizer and RNG states, and the batch order is a function of (seed, epoch)).

Two kills of real Snakemake jobs: SFT gets SIGTERM (a SLURM time limit) from a callback at a
fixed step and saves a checkpoint of that step before it exits; a preference job freezes itself
at a fixed step and is then SIGKILLed from outside (a preemption), once a checkpoint exists."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow  # real Snakemake runs, killed and rerun
ROOT = Path(__file__).resolve().parents[1]
SFT_SAVE_STEPS, PREF_SAVE_STEPS = 4, 1  # tiny: 15 SFT steps (240 rows / 16), 4 preference steps
TARGETS = ["results/metrics/sft.jsonl", "results/metrics/dpo.jsonl"]


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", *args, "--configfile", str(workdir / "resume.yaml")]  # last: it takes several values


def run(workdir: Path, *args: str, fault: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(fault or {})}
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """SFT and one DPO experiment without interruption, checkpointing often."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["sft"]["save_steps"] = SFT_SAVE_STEPS
    config["preference_defaults"]["save_steps"] = PREF_SAVE_STEPS
    config["experiments"] = {"dpo": {"loss": "dpo"}}
    config["claims"] = {}  # tiny.yaml's claims name experiments this grid leaves out
    (workdir / "resume.yaml").write_text(yaml.safe_dump(config))
    done = run(workdir, *TARGETS)
    assert done.returncode == 0, done.stderr[-4000:]
    assert not (workdir / "results/checkpoints/sft").exists()  # dropped once the model is saved
    return workdir


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)  # keeps mtimes and .snakemake, so nothing upstream reruns
    return dst


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_training(resumed: Path, reference: Path, name: str, model: str) -> dict:
    assert metrics(resumed / f"results/metrics/{name}.jsonl") == metrics(reference / f"results/metrics/{name}.jsonl")
    weights = f"results/models/{model}/model.safetensors"
    assert (resumed / weights).read_bytes() == (reference / weights).read_bytes()
    return json.loads((resumed / f"results/models/{model}/dppo_training.json").read_text())


def test_sft_stopped_by_a_time_limit_resumes_bit_identical(uninterrupted, tmp_path):
    workdir = copy_run(uninterrupted, tmp_path / "run")
    kill = {"DPPO_FAULT_RUN": "sft", "DPPO_FAULT_AT_STEP": "10", "DPPO_FAULT_SIGNAL": "SIGTERM"}
    done = run(workdir, TARGETS[0], "--forcerun", "sft", fault=kill)
    assert done.returncode != 0
    assert not (workdir / "results/models/sft").exists()  # no half-trained model taken as done
    checkpoints = workdir / "results/checkpoints/sft"
    [run_dir] = checkpoints.glob("run-*")  # one directory per settings/data/weights fingerprint
    # SIGTERM: step 10 is finished and checkpointed before the job exits (not only checkpoint-8)
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-10"]
    assert [m["step"] for m in metrics(run_dir / "metrics.jsonl")] == list(range(1, 11))
    assert "TrainingTerminated: terminated (SIGTERM) at step 10" in (workdir / "logs/sft/sft.log").read_text()

    done = run(workdir, TARGETS[0])  # the same target again, as a resubmitted job would
    assert done.returncode == 0, done.stderr[-4000:]
    info = assert_same_training(workdir, uninterrupted, "sft", "sft")
    assert info["resumed_from"] == str(run_dir.relative_to(workdir) / "checkpoint-10") and info["steps"] == 15
    assert not checkpoints.exists()


def _stopped_training_process(snakemake: subprocess.Popen, workdir: Path, timeout: float = 300) -> psutil.Process:
    """The process that trains, once it has stopped itself (SIGSTOP from the fault hook): the job's
    own process, or its warm worker's child (dppo.runtime.warm), which runs in the job's directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert snakemake.poll() is None, "snakemake ended before the training job stopped"
        for process in psutil.process_iter():
            try:
                if process.status() == psutil.STATUS_STOPPED and process.cwd() == str(workdir):
                    return process
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError("the training job never reached the fault step")


def test_preference_job_killed_from_outside_resumes_bit_identical(uninterrupted, tmp_path):
    workdir = copy_run(uninterrupted, tmp_path / "run")
    freeze = {"DPPO_FAULT_RUN": "dpo", "DPPO_FAULT_AT_STEP": "3", "DPPO_FAULT_SIGNAL": "SIGSTOP"}
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **freeze}
    snakemake = subprocess.Popen(snakemake_cmd(workdir, TARGETS[1], "--forcerun", "train_preference"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        job = _stopped_training_process(snakemake, workdir)
        [run_dir] = (workdir / "results/checkpoints/dpo/seed-0").glob("run-*")
        assert (run_dir / "checkpoint-2" / "manifest.json").is_file()
        os.kill(job.pid, signal.SIGKILL)  # the preemption: no handler runs, nothing is flushed
        assert snakemake.wait(timeout=120) != 0
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert not (workdir / "results/models/dpo").exists()
    assert not (workdir / "results/metrics/dpo.jsonl").exists()

    done = run(workdir, TARGETS[1])
    assert done.returncode == 0, done.stderr[-4000:]
    info = assert_same_training(workdir, uninterrupted, "dpo", "dpo/seed-0")
    assert info["resumed_from"] == str(run_dir.relative_to(workdir) / "checkpoint-2") and info["steps"] == 4


def test_a_warm_worker_trains_what_a_fresh_process_trains(uninterrupted, tmp_path):
    """The uninterrupted run trained in a warm worker's child (dppo.runtime.warm, on by default here);
    the same job in a fresh process of its own gives the same bytes."""
    said = "running in a warm worker's child"
    assert said in (uninterrupted / "logs/train_preference/dpo.log").read_text()
    workdir = copy_run(uninterrupted, tmp_path / "run")
    (workdir / "logs/train_preference/dpo.log").unlink()
    done = run(workdir, TARGETS[1], "--forcerun", "train_preference", fault={"DPPO_WARM_WORKER": "0"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert said not in (workdir / "logs/train_preference/dpo.log").read_text()
    assert_same_training(workdir, uninterrupted, "dpo", "dpo/seed-0")


def test_every_job_that_loads_a_model_runs_warm_and_gives_a_fresh_process_bytes(uninterrupted, tmp_path):
    """The initial model, SFT, y_gen and the reference log-probs were made in a warm worker's
    child too; y_gen and the reference log-probs made again in fresh processes are the same bytes."""
    said = "running in a warm worker's child"
    for log in ("init_model/init_model", "sft/sft", "pregenerate/pregenerate", "ref_logps/ref_logps"):
        assert said in (uninterrupted / f"logs/{log}.log").read_text(), log
    workdir = copy_run(uninterrupted, tmp_path / "run")
    outputs = ("results/ygen/train.parquet", "results/ref_logps/train.parquet")
    for log in ("pregenerate/pregenerate", "ref_logps/ref_logps"):
        (workdir / f"logs/{log}.log").unlink()
    done = run(workdir, *outputs, "--forcerun", "pregenerate", "ref_logps", fault={"DPPO_WARM_WORKER": "0"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert said not in (workdir / "logs/pregenerate/pregenerate.log").read_text()
    for output in outputs:
        assert (workdir / output).read_bytes() == (uninterrupted / output).read_bytes(), output


def test_a_damaged_finished_model_is_named_and_its_forcerun_rebuilds_it_bit_identical(uninterrupted, tmp_path):
    """A finished model damaged after its job published it: the next job that loads it fails
    naming the directory, the file and the command; that command rebuilds it, bit-identical."""
    workdir = copy_run(uninterrupted, tmp_path / "run")
    weights = workdir / "results/models/sft/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: safetensors alone would load it without a word
    weights.write_bytes(bytes(data))
    done = run(workdir, TARGETS[1], "--forcerun", "ref_logps")
    assert done.returncode != 0
    said = (workdir / "logs/ref_logps/ref_logps.log").read_text()
    assert ("results/models/sft: model.safetensors does not match its manifest" in said
            and "snakemake --forcerun results/models/sft" in said), said[-3000:]

    done = run(workdir, TARGETS[1], "--forcerun", "results/models/sft")
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_training(workdir, uninterrupted, "sft", "sft")
    assert_same_training(workdir, uninterrupted, "dpo", "dpo/seed-0")
