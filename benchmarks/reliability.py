"""An adversarial corpus against the tiny config, classified by outcome, printed as one table.

    python benchmarks/reliability.py            # bad configs, then kills and corruption
    python benchmarks/reliability.py --only config disk

Not a test suite (the tests pin each class: tests/test_config.py, test_reliability.py,
test_resume.py, test_bad_data.py): this re-runs a wider corpus as a user would meet it and
counts outcomes, so the totals of the reliability issue can be measured again on any commit.

- **config**: one bad value at a time in configs/tiny.yaml, then ``snakemake -n all``. A clear
  error is a non-zero exit before any job whose message names the key, with no Python traceback;
  a crash is a traceback; accepted means it planned the jobs (right only for the valid controls).
- **kill**: a DPO job (2 seeds, a checkpoint every step) SIGKILLed from outside at several delays
  after its start (imports, training, checkpoint writes, the final save), then SIGKILL of
  Snakemake itself, then (where the job ran in a warm worker, dppo.runtime.warm) the worker's child
  that trains; each rerun of the same target must succeed at once, bit-identical (metrics
  and weights) to an uninterrupted run.
- **corrupt**: the job frozen at step 3 and killed, then one file of its state damaged; the
  rerun must succeed at once, bit-identical, saying what it discarded where it discarded.
- **disk full**: the same job on a tmpfs with a little headroom (needs root for ``mount``),
  then the tree moved to a roomy disk and rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import yaml
from common import machine, work_directory

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())

# (case, the key a clear message must name, change to tiny.yaml; None deletes the key)
BAD_CONFIGS: list[tuple[str, str, dict]] = [
    ("max_len_percentile NaN", "max_len_percentile", {"data.max_len_percentile": math.nan}),
    ("max_len_percentile 150", "max_len_percentile", {"data.max_len_percentile": 150}),
    ("sft lr inf", "lr", {"sft.lr": math.inf}),
    ("sft lr NaN", "lr", {"sft.lr": math.nan}),
    ("preference lr inf", "lr", {"preference_defaults.lr": math.inf}),
    ("epochs inf", "epochs", {"preference_defaults.epochs": math.inf}),
    ("epochs 0", "epochs", {"preference_defaults.epochs": 0}),
    ("epochs as a string", "epochs", {"preference_defaults.epochs": "two"}),
    ("epochs true", "epochs", {"preference_defaults.epochs": True}),
    ("scheduler bogus", "scheduler", {"preference_defaults.scheduler": "bogus"}),
    ("micro_batch_size not dividing batch_size", "micro_batch_size", {"preference_defaults.micro_batch_size": 5}),
    ("batch_size 0", "batch_size", {"preference_defaults.batch_size": 0}),
    ("n_train above the training rows", "n_train", {"experiments.unll_small.n_train": 10_000}),
    ("n_train 0", "n_train", {"experiments.unll_small.n_train": 0}),
    ("beta negative", "beta", {"preference_defaults.beta": -0.1}),
    ("alpha NaN", "alpha", {"experiments.unll.alpha": math.nan}),
    ("alpha negative", "alpha", {"experiments.unll.alpha": -1.0}),
    ("zeta 1.5", "zeta", {"experiments.unll.zeta": 1.5}),
    ("f bogus", "f", {"experiments.unll.f": "cubic"}),
    ("loss bogus", "loss", {"experiments.unll.loss": "unlikely"}),
    ("unll_level bogus", "unll_level", {"experiments.unll.unll_level": "token"}),
    ("misspelt experiment key", "alpah", {"experiments.unll.alpah": 0.1}),
    ("unknown top-level key", "winrate", {"winrate": {"n_boot": 10}}),
    ("seeds empty", "seeds", {"experiments.dpo.seeds": []}),
    ("seeds repeated", "seeds", {"experiments.dpo.seeds": [0, 0]}),
    ("seed negative", "seeds", {"experiments.dpo.seeds": [-1]}),
    ("sweep over an empty list", "alpha", {"experiments.conll.sweep": {"alpha": []}}),
    ("sweep value NaN", "alpha", {"experiments.conll.sweep": {"alpha": [math.nan]}}),
    ("sweep over an unknown key", "alhpa", {"experiments.conll.sweep": {"alhpa": [0.5]}}),
    ("init names no experiment", "init", {"experiments.unll_then_dpo.init": "nonexistent"}),
    ("init cycle", "init", {"experiments.unll.init": "unll_then_dpo"}),
    ("init names itself", "init", {"experiments.dpo.init": "dpo"}),
    ("claims name no experiment", "chained", {"claims.chained": "nonexistent"}),
    ("win_rate baseline names no experiment", "baseline", {"win_rate.baseline": "nonexistent"}),
    ("n_boot 0", "n_boot", {"win_rate.n_boot": 0}),
    ("toy loss with an unknown key", "bta", {"toy.losses.dpo": {"loss": "dpo", "bta": 0.1}}),
    ("toy dynamics_loss not among toy.losses", "dynamics_loss", {"toy.dynamics_loss": "nonexistent"}),
    ("toy seeds empty", "seeds", {"toy.seeds": []}),
    ("toy steps 0", "steps", {"toy.steps": 0}),
    ("toy initial probability above 1", "chosen_on", {"toy.initial.chosen_on": 1.5}),
    ("reward seqcls with no model", "model", {"reward.backend": "seqcls"}),
    ("reward backend bogus", "backend", {"reward.backend": "gpt4"}),
    ("generation engine bogus", "engine", {"generation.engine": "tgi"}),
    ("generation.backend (renamed engine)", "generation.engine", {"generation.backend": "vllm"}),
    ("generation batch_size 0", "batch_size", {"generation.batch_size": 0}),
    ("overlong bogus", "overlong", {"data.overlong": "wrap"}),
    ("max_eval_prompts negative", "max_eval_prompts", {"data.pref.max_eval_prompts": -1}),
    ("synthetic test split empty", "n_pref_test", {"synthetic.n_pref_test": 0}),
    ("synthetic flaw rate 2", "flawed_demo_rate", {"synthetic.flawed_demo_rate": 2.0}),
    ("misspelt rule under resources", "train_preferenc", {"resources.train_preferenc": {"gpu": 1}}),
    ("resources gpu negative", "gpu", {"resources.default.gpu": -1}),
    ("resources mem_mb as a string", "mem_mb", {"resources.default.mem_mb": "2G"}),
    ("model init a missing path", "init", {"model.init": "/nonexistent/model"}),
    ("data path a missing directory", "path", {"data.sft.path": "/nonexistent/data"}),
    ("tiny_model heads not dividing hidden", "num_attention_heads", {"tiny_model.num_attention_heads": 3}),
    ("experiments section missing", "experiments", {"experiments": None}),
]
# Valid edge values: these must be accepted (a refusal here is a false alarm).
VALID_CONFIGS: list[tuple[str, dict]] = [
    ("alpha 0 (DPO with a penalty of weight 0)", {"experiments.unll.alpha": 0.0}),
    ("n_train equal to the training rows", {"experiments.unll_small.n_train": 64}),
    ("lr 1e-9", {"preference_defaults.lr": 1e-9}),
    ("max_len_percentile 100", {"data.max_len_percentile": 100}),
    ("one experiment, no claims", {"experiments": {"dpo": {"loss": "dpo"}}, "claims": {}}),
]


def with_changes(changes: dict) -> dict:
    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return config


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The repository's Snakefile on ``workdir``, with ``workdir/config.yaml``."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", *args, "--configfile", str(workdir / "config.yaml")]


def job_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", **(extra or {})}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=600, env=job_env())


def plan(config: dict, workdir: Path) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return snakemake(workdir, "-n", "all")


def config_corpus(work: Path) -> list[tuple[str, str, str]]:
    """(area, case, outcome) for every bad and valid config."""
    rows = []
    for k, (case, key, changes) in enumerate(BAD_CONFIGS):
        done = plan(with_changes(changes), work / f"config-{k}")
        text = done.stdout + done.stderr
        if done.returncode == 0:
            outcome = "silently accepted"
        elif "Traceback (most recent call last)" in text:
            outcome = "crash (traceback)"
        elif key in text:
            outcome = "clear error before any job"
        else:
            outcome = "error not naming the key"
        rows.append(("bad config", case, outcome))
        if outcome != "clear error before any job":
            print(f"  {case}: {outcome}\n    {text.strip()[-600:]}", file=sys.stderr)
    for k, (case, changes) in enumerate(VALID_CONFIGS):
        done = plan(with_changes(changes), work / f"valid-{k}")
        outcome = "accepted (valid)" if done.returncode == 0 else "refused a valid value"
        rows.append(("valid config (control)", case, outcome))
        if done.returncode != 0:
            print(f"  {case}: refused\n    {(done.stdout + done.stderr).strip()[-600:]}", file=sys.stderr)
    return rows


# --- kills and corruption ---------------------------------------------------------------------

TARGET = "results/metrics/dpo.jsonl"
MODELS = ("results/models/dpo/seed-0/model.safetensors", "results/models/dpo/seed-1/model.safetensors")


def kill_config() -> dict:
    config = copy.deepcopy(TINY)
    config["preference_defaults"]["save_steps"] = 1
    config["experiments"] = {"dpo": {"loss": "dpo", "seeds": [0, 1]}}
    config["claims"] = {}
    return config


def same_as(workdir: Path, reference: Path) -> bool:
    return all((workdir / p).read_bytes() == (reference / p).read_bytes() for p in (TARGET, *MODELS))


def job_logs(workdir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (workdir / "logs").rglob("dpo*.log"))


def rerun_outcome(workdir: Path, reference: Path) -> str:
    """Rerun the target (as a resubmitted job would); a second try only after an --unlock."""
    done = snakemake(workdir, TARGET)
    prefix = ""
    if done.returncode != 0 and "LockException" in done.stdout + done.stderr:
        snakemake(workdir, "--unlock")
        done = snakemake(workdir, TARGET)
        prefix = "after --unlock: "
    if done.returncode != 0:
        again = snakemake(workdir, TARGET)
        return prefix + ("stuck (fails on every rerun)" if again.returncode != 0 else "failed once, then ran")
    logs = job_logs(workdir)
    if not same_as(workdir, reference):
        return prefix + "ran, but not bit-identical"
    if "already finished" in logs:
        return prefix + "kept the seeds finished before the kill (bit-identical)"
    if "discard" in logs.lower() or "removed" in logs.lower():
        return prefix + "restarted clean, naming what it discarded (bit-identical)"
    if "resum" in logs.lower():
        return prefix + "resumed bit-identical"
    return prefix + "reran bit-identical"


def start_training(workdir: Path, env: dict | None = None, output=subprocess.DEVNULL) -> subprocess.Popen:
    cmd = snakemake_cmd(workdir, TARGET, "--forcerun", "train_preference")
    return subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=job_env(env))


def job_process(snakemake_proc: subprocess.Popen, timeout: float = 120) -> psutil.Process | None:
    """The training job's process: the first python below Snakemake (its job shell's child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and snakemake_proc.poll() is None:
        for child in psutil.Process(snakemake_proc.pid).children(recursive=True):
            try:
                if "python" in child.name() and child.ppid() != 1:
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    return None


def stopped_in(workdir: Path) -> list[psutil.Process]:
    """Stopped processes working in ``workdir``: the training job, or the warm worker's child
    (dppo.runtime.warm) that trains for it."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if process.status() == psutil.STATUS_STOPPED and process.cwd() == str(workdir):
                found.append(process)
    return found


def warm_children_in(workdir: Path) -> list[psutil.Process]:
    """A warm worker's children (dppo.runtime.warm) training for a job in ``workdir``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if "dppo.runtime.warm" in (process.info["cmdline"] or []) and process.cwd() == str(workdir):
                found.append(process)
    return found


def reference_run(work: Path) -> tuple[Path, float]:
    """The uninterrupted run every case is compared with, and how long its training job's own
    process lives, start-up and work (its dppo-timing line), to spread the kills over it."""
    reference = work / "reference"
    reference.mkdir(parents=True)
    (reference / "config.yaml").write_text(yaml.safe_dump(kill_config()))
    done = snakemake(reference, TARGET)
    if done.returncode != 0:
        raise SystemExit(f"the uninterrupted reference run failed:\n{done.stderr[-3000:]}")
    start_training(reference).wait()
    timing = json.loads(job_logs(reference).rsplit("dppo-timing ", 1)[1].splitlines()[0])
    return reference, timing["startup_s"] + timing["work_s"]


def kill_when(fraction: float, job_s: float, job: psutil.Process | None, find=None) -> bool:
    """SIGKILL the job's process (or what ``find()`` returns: its warm worker's child) once
    ``fraction`` of the job's life has passed since the job's process started; False if there
    was nothing to kill by then."""
    if job is None:
        return False
    with contextlib.suppress(psutil.NoSuchProcess):
        started = job.create_time()
        target = job
        while find is not None and (target := find()) is None:
            if not job.is_running():
                return False
            time.sleep(0.02)
        time.sleep(max(0.0, fraction * job_s - (time.time() - started)))
        target.kill()  # a preemption: no handler runs
        return True
    return False


def kill_corpus(work: Path, reference: Path, job_s: float) -> list[tuple[str, str, str]]:
    rows = []
    for fraction in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97):
        workdir = work / f"kill-{fraction}"
        shutil.copytree(reference, workdir, symlinks=True)
        proc = start_training(workdir)
        killed = kill_when(fraction, job_s, job_process(proc))
        proc.wait(timeout=120)
        outcome = rerun_outcome(workdir, reference) if killed else "not run: the job ended first"
        rows.append(("training SIGKILL", f"job killed at {fraction:.0%} of its life", outcome))
    for fraction in (0.5, 0.7, 0.9):
        workdir = work / f"kill-worker-child-{fraction}"
        shutil.copytree(reference, workdir, symlinks=True)
        proc = start_training(workdir)
        # the child that trains is killed (as the OOM killer would pick it), not the job's own process
        killed = kill_when(fraction, job_s, job_process(proc), lambda: next(iter(warm_children_in(workdir)), None))
        proc.wait(timeout=120)
        outcome = rerun_outcome(workdir, reference) if killed else "not run: no warm worker's child found"
        rows.append(("warm worker's child SIGKILL", f"child killed at {fraction:.0%} of the job's life", outcome))
    for fraction in (0.3, 0.7):
        workdir = work / f"kill-snakemake-{fraction}"
        shutil.copytree(reference, workdir, symlinks=True)
        proc = start_training(workdir)
        job = job_process(proc)
        if job is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                time.sleep(max(0.0, fraction * job_s - (time.time() - job.create_time())))
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, as a lost login session
        proc.wait()
        outcome = rerun_outcome(workdir, reference)
        rows.append(("snakemake SIGKILL", f"snakemake and job killed at {fraction:.0%} of the job's life", outcome))
    return rows


def disk_full_corpus(work: Path, reference: Path) -> list[tuple[str, str, str]]:
    """Training on a filesystem that fills up (a tmpfs sized to the tree plus some headroom);
    then the tree moved to a roomy disk (mtimes kept) and the same target rerun."""
    rows = []
    used_kib = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file()) // 1024 + 1
    for headroom_kib in (16, 96, 256, 640):
        mount = work / f"full-{headroom_kib}"
        mount.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={4 * used_kib + 16384}k", "tmpfs",
                                  str(mount)], capture_output=True, text=True)
        if mounted.returncode != 0:
            return [("disk full", "tmpfs", f"not run: mount failed ({mounted.stderr.strip()[:80]})")]
        try:
            workdir = mount / "run"
            shutil.copytree(reference, workdir, symlinks=True)
            fs = os.statvfs(mount)
            in_use_kib = (fs.f_blocks - fs.f_bfree) * fs.f_frsize // 1024
            subprocess.run(["mount", "-o", f"remount,size={in_use_kib + headroom_kib}k", str(mount)], check=True)
            with (work / f"full-{headroom_kib}.out").open("w+") as output:  # outside the full disk
                proc = start_training(workdir, output=output)
                proc.wait(timeout=300)
                output.seek(0)
                said = output.read() + job_logs(workdir)
            first = ("finished" if proc.returncode == 0 else
                     "stopped, saying the disk is full" if ("No space left" in said or "disk is probably full" in said) else
                     "stopped, reason unclear")
            moved = work / f"moved-{headroom_kib}"
            shutil.copytree(workdir, moved, symlinks=True)
        finally:
            subprocess.run(["umount", str(mount)], check=False)
        outcome = rerun_outcome(moved, reference)
        rows.append(("disk full", f"{headroom_kib} KiB free", f"{first}; then {outcome}"))
    return rows


def frozen_at_step_3(reference: Path, workdir: Path) -> Path:
    """A copy of the reference whose seed-0 training was frozen at step 3 and SIGKILLed."""
    shutil.copytree(reference, workdir, symlinks=True)
    proc = start_training(workdir, env={"DPPO_FAULT_RUN": "dpo", "DPPO_FAULT_AT_STEP": "3",
                                        "DPPO_FAULT_SIGNAL": "SIGSTOP"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stopped = stopped_in(workdir)
        if stopped:
            stopped[0].kill()
            break
        time.sleep(0.1)
    proc.wait(timeout=120)
    [run_dir] = (workdir / "results/checkpoints/dpo/seed-0").glob("run-*")
    return run_dir


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_corpus(work: Path, reference: Path) -> list[tuple[str, str, str]]:
    def latest(run_dir: Path) -> Path:
        return max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    damages = {
        "no damage (control)": lambda run: None,
        "manifest 0 bytes": lambda run: (latest(run) / "manifest.json").write_bytes(b""),
        "manifest torn": lambda run: truncate(latest(run) / "manifest.json", 0.5),
        "RNG state 0 bytes": lambda run: (latest(run) / "rng.pt").write_bytes(b""),
        "optimizer state 0 bytes": lambda run: (latest(run) / "optimizer.pt").write_bytes(b""),
        "checkpoint weights truncated": lambda run: truncate(next(latest(run).glob("*.safetensors")), 0.3),
        "checkpoint weights 0 bytes": lambda run: next(latest(run).glob("*.safetensors")).write_bytes(b""),
        "optimizer state truncated": lambda run: truncate(latest(run) / "optimizer.pt", 0.5),
        "every checkpoint file removed but the manifest": lambda run: [
            p.unlink() for p in latest(run).iterdir() if p.name != "manifest.json"],
        "metrics log: torn last line": lambda run: (run / "metrics.jsonl").write_text(
            (run / "metrics.jsonl").read_text() + '{"step": 99, "lo'),
        "metrics log: binary garbage appended": lambda run: (run / "metrics.jsonl").write_bytes(
            (run / "metrics.jsonl").read_bytes() + b"\x00\xff\xfe\n"),
        "metrics log: a line that is JSON but not a record": lambda run: (run / "metrics.jsonl").write_text(
            (run / "metrics.jsonl").read_text() + "[1, 2]\n"),
        "leftover temporary files of a killed write": lambda run: [
            (run.parents[3] / "models/dpo/.seed-0.tmp-killed").mkdir(parents=True, exist_ok=True),
            (run / ".metrics.jsonl.tmp-killed").write_text("x")],
    }
    rows = []
    for k, (case, damage) in enumerate(damages.items()):
        workdir = work / f"corrupt-{k}"
        run_dir = frozen_at_step_3(reference, workdir)
        try:
            damage(run_dir)
        except (StopIteration, ValueError) as missing:
            rows.append(("corruption", case, f"not applicable ({missing!r})"))
            continue
        outcome = rerun_outcome(workdir, reference)
        rows.append(("corruption", case, outcome))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["config", "kill", "corrupt", "disk"],
                        default=["config", "kill", "corrupt", "disk"], help="some parts of the corpus")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    print(machine())
    with work_directory("dppo-reliability-", keep=args.keep) as work:
        rows = []
        if "config" in args.only:
            rows += config_corpus(work)
        if set(args.only) - {"config"}:
            reference, job_s = reference_run(work)
            if "kill" in args.only:
                rows += kill_corpus(work, reference, job_s)
            if "corrupt" in args.only:
                rows += corrupt_corpus(work, reference)
            if "disk" in args.only:
                rows += disk_full_corpus(work, reference)
    width = max(len(case) for _, case, _ in rows)
    for area, case, outcome in rows:
        print(f"  {area:24s} {case:{width}s}  {outcome}")
    print("\ntotals")
    for (area, outcome), n in sorted(Counter((a, o) for a, _, o in rows).items()):
        print(f"  {area:24s} {n:3d}  {outcome}")


if __name__ == "__main__":
    main()
