"""The warm worker (dppo.runtime.warm) with real processes: a client per job, as Snakemake starts it,
and a worker that forks a child per job. The jobs are tests/warm_jobs.py (no torch: fast)."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from dppo.runtime import warm

TESTS = Path(__file__).resolve().parent
CLIENT = """
import errno, json, os, pathlib, sys, types
if os.environ.get("WARM_TEST_LOCK_ENOSPC"):  # a full disk where the start lock would be created
    real_open = pathlib.Path.open
    def full_open(self, *args, **kwargs):
        if self.name == "start.lock":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_open(self, *args, **kwargs)
    pathlib.Path.open = full_open
from dppo.runtime.launch import run_rule_job
spec = json.loads(sys.argv[1])
run_rule_job(types.SimpleNamespace(rule="warm_test", log=[spec["log"]], threads=1), spec["target"], spec["kwargs"])
"""


@pytest.fixture
def env():
    """A private socket directory (short: a socket path has at most 107 bytes) and a quick idle
    exit; afterwards no worker of this test is left running."""
    sockets = tempfile.mkdtemp(prefix="wt", dir="/tmp")
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    yield {**env, "PYTHONPATH": pythonpath, "TMPDIR": sockets, "DPPO_WARM_IDLE_S": "20"}
    for process in psutil.process_iter(["cmdline"]):
        if any(sockets in part for part in process.info["cmdline"] or []):
            process.kill()
    shutil.rmtree(sockets, ignore_errors=True)


def client(tmp_path: Path, env: dict, target: str, **kwargs) -> subprocess.Popen:
    spec = {"log": str(tmp_path / "job.log"), "target": f"warm_jobs:{target}", "kwargs": kwargs}
    return subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(spec)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def workers(env: dict) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "dppo.runtime.warm" in (p.info["cmdline"] or []) and any(env["TMPDIR"] in c for c in p.info["cmdline"])]


def gone(process: psutil.Process, timeout: float = 10) -> None:
    """Wait until ``process`` has ended (a zombie counts: its parent may be a client that never reaps it)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(psutil.NoSuchProcess):
        while process.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"{process.pid} still running"
            time.sleep(0.02)


def socket_path(env: dict) -> Path:
    """The socket of the worker that a job of tests/warm_jobs.py in ``env`` would use."""
    code = "from dppo.runtime import warm; print(warm.worker_dir() / f'{warm.worker_key((\"warm_jobs\",))}.sock')"
    return Path(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                               text=True).stdout.strip())


def assert_ran_in_its_client(tmp_path: Path, env: dict, cause: str) -> None:
    """A job succeeds in its own process, with one warning line that names ``cause``; no worker runs."""
    proc = client(tmp_path, env, "record", out=str(tmp_path / "who"))
    code, stderr = finish(proc)
    assert code == 0, stderr
    assert int((tmp_path / "who").read_text().split()[0]) == proc.pid
    [warning] = [line for line in stderr.splitlines() if "warm worker" in line]
    assert cause in warning, warning
    assert not workers(env)


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


def test_jobs_run_in_fresh_children_of_one_worker(tmp_path, env):
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        proc = client(tmp_path / name, {**env, "PWD": str(tmp_path / name)}, "record", out=str(tmp_path / name / "who"))
        code, stderr = finish(proc)
        assert code == 0, stderr
        pid, ppid, cwd, pwd = (tmp_path / name / "who").read_text().split()
        runs.append((proc.pid, int(pid), int(ppid)))
        assert cwd == pwd == str(tmp_path / name)  # the client's working directory, and the shell's word for it
        assert "written to the job's own stderr" in stderr  # fds 1 and 2 are the client's
        log = (tmp_path / name / "job.log").read_text()
        assert "printed to the log" in log
        timing = json.loads(log.split("dppo-timing ")[1])
        assert timing["rule"] == "warm_test" and timing["startup_s"] > 0  # counted from the client's start
    [worker] = workers(env)
    (client_1, job_1, parent_1), (client_2, job_2, parent_2) = runs
    assert parent_1 == parent_2 == worker.pid  # one worker served both directories
    assert len({client_1, job_1, client_2, job_2}) == 4  # each job in a child of its own


@pytest.mark.parametrize("target, kwargs, code, said", [
    ("fail", {"message": "boom"}, 1, "ValueError: boom"),
    ("exit_with", {"code": 3}, 3, ""),
    ("die_by_sigkill", {}, -signal.SIGKILL, ""),
])
def test_the_client_ends_as_its_job_did(tmp_path, env, target, kwargs, code, said):
    warm_code, warm_stderr = finish(client(tmp_path, env, target, **kwargs))
    cold_code, cold_stderr = finish(client(tmp_path, {**env, warm.SWITCH: "0"}, target, **kwargs))
    assert warm_code == cold_code == code
    assert said in warm_stderr and said in cold_stderr
    if said:
        assert "rule warm_test failed" in warm_stderr
        assert said in (tmp_path / "job.log").read_text()


def test_a_client_killed_without_a_word_takes_its_job_with_it(tmp_path, env):
    proc = client(tmp_path, env, "wait_for_sigterm", out=str(tmp_path / "pid"))
    job = psutil.Process(int(wait_for(tmp_path / "pid")))
    assert job.pid != proc.pid
    proc.kill()  # SIGKILL: the client runs no handler
    job.wait(timeout=5)  # the job saw its client's connection close and killed itself
    assert not (tmp_path / "pid.term").exists()


def test_sigterm_to_the_client_reaches_the_job(tmp_path, env):
    proc = client(tmp_path, env, "wait_for_sigterm", out=str(tmp_path / "pid"))
    assert int(wait_for(tmp_path / "pid")) != proc.pid
    proc.send_signal(signal.SIGTERM)  # a time limit: the job's own handler runs (a checkpoint, in training)
    code, stderr = finish(proc)
    assert code == 7, stderr
    assert (tmp_path / "pid.term").read_text() == "terminated"


def test_a_worker_that_dies_while_starting_leaves_the_job_to_its_client(tmp_path, env):
    env = {**env, "WARM_JOBS_SLOW_IMPORT": "3"}
    proc = client(tmp_path, env, "record", out=str(tmp_path / "who"))
    deadline = time.monotonic() + 30
    while not workers(env):
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    time.sleep(0.5)  # bound its socket, importing the job's module
    for worker in workers(env):
        worker.kill()
    code, stderr = finish(proc)
    assert code == 0, stderr
    assert int((tmp_path / "who").read_text().split()[0]) == proc.pid  # ran in the client itself
    assert "no warm worker could take the job" in stderr


def test_no_worker_under_slurm_for_gpu_jobs_or_when_switched_off(tmp_path, env, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(warm.SWITCH, raising=False)
    assert warm.usable(0)
    assert not warm.usable(1)
    monkeypatch.setenv(warm.SWITCH, "0")
    assert not warm.usable(0)
    monkeypatch.delenv(warm.SWITCH)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert not warm.usable(0)
    proc = client(tmp_path, {**env, "SLURM_JOB_ID": "17"}, "record", out=str(tmp_path / "who"))
    assert finish(proc)[0] == 0
    assert int((tmp_path / "who").read_text().split()[0]) == proc.pid
    assert not workers(env)


def test_the_worker_key_follows_sources_environment_and_preload(monkeypatch):
    key = warm.worker_key(("dppo.train.preference",))
    assert warm.worker_key(("dppo.train.preference",)) == key
    assert warm.worker_key(("dppo.train.sft",)) != key
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert warm.worker_key(("dppo.train.preference",)) != key
    monkeypatch.undo()
    assert warm.worker_key(("dppo.train.preference",)) == key  # sources: see the next test


def test_every_pipeline_job_goes_to_one_worker():
    keys = {warm.worker_key(warm.job_preload(module)) for module in warm.PRELOAD}
    assert len(keys) == 1
    assert warm.worker_key(warm.job_preload("warm_jobs")) not in keys


def test_the_preload_list_names_job_modules_and_importable_modules():
    # find_spec finds a module without importing it (its parent packages only)
    assert warm.PRELOAD and all(importlib.util.find_spec(job) for job in warm.PRELOAD)
    assert all(importlib.util.find_spec(name) for names in warm.PRELOAD.values() for name in names)


def test_an_idle_worker_leaves_only_its_log_if_it_said_something(tmp_path, env):
    env = {**env, "DPPO_WARM_IDLE_S": "1"}
    sockets = Path(env["TMPDIR"]) / f"dppo-warm-{os.getuid()}"

    def serve_one_job(key_env: dict, bad_request: bool) -> tuple[set[str], Path]:
        code, stderr = finish(client(tmp_path, key_env, "record", out=str(tmp_path / "who")))
        assert code == 0, stderr
        [socket_path] = sockets.glob("*.sock")
        if bad_request:  # a request that is not one: the worker logs it
            with socket.socket(socket.AF_UNIX) as bad:
                bad.connect(str(socket_path))
                bad.sendall(b"\0\0\0\2{x")
        deadline = time.monotonic() + 30
        while workers(env):
            assert time.monotonic() < deadline, "the idle worker did not exit"
            time.sleep(0.1)
        return {p.name for p in sockets.iterdir()}, socket_path.with_suffix(".log")

    left, _ = serve_one_job(env, bad_request=False)
    assert left == {"start.lock"}  # no socket, no empty log, no lock file of its own
    left, log = serve_one_job({**env, "WARM_JOBS_OTHER_KEY": "1"}, bad_request=True)
    assert left == {"start.lock", log.name}
    assert "bad request" in log.read_text()


def test_a_directory_at_the_socket_path_leaves_every_rerun_to_its_own_process(tmp_path, env):
    socket_path(env).mkdir()
    for _ in range(2):  # a rerun is not stuck either
        assert_ran_in_its_client(tmp_path, env, "Is a directory")


@pytest.mark.parametrize("spoil", ["mode 0777", "another owner", "a symlink", "a file"])
def test_a_socket_directory_not_private_to_this_user_is_never_used(tmp_path, env, spoil):
    sockets = Path(env["TMPDIR"]) / f"dppo-warm-{os.getuid()}"  # a name anyone can guess
    if spoil == "a symlink":  # to a private directory: still not ours to trust
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        sockets.symlink_to(tmp_path / "elsewhere")
    elif spoil == "a file":
        sockets.write_text("")
    else:
        sockets.mkdir(mode=0o700)
        if spoil == "mode 0777":
            sockets.chmod(0o777)
        else:
            os.chown(sockets, 65534, 65534)  # needs root, as the other user needs nothing
    assert_ran_in_its_client(tmp_path, env, "not private")


def test_a_full_disk_at_the_start_lock_leaves_the_job_to_its_client(tmp_path, env):
    assert_ran_in_its_client(tmp_path, {**env, "WARM_TEST_LOCK_ENOSPC": "1"}, os.strerror(errno.ENOSPC))


def test_sockets_live_in_a_private_runtime_dir(tmp_path, env):
    runtime = Path(env["TMPDIR"]) / "run"
    runtime.mkdir(mode=0o700)
    code, stderr = finish(client(tmp_path, {**env, "XDG_RUNTIME_DIR": str(runtime)}, "record", out=str(tmp_path / "who")))
    assert code == 0, stderr
    assert list((runtime / "dppo-warm").glob("*.sock"))
    runtime.chmod(0o755)  # another user's to read: the shared temporary directory then
    code, stderr = finish(client(tmp_path, {**env, "XDG_RUNTIME_DIR": str(runtime)}, "record", out=str(tmp_path / "who")))
    assert code == 0, stderr
    assert list((Path(env["TMPDIR"]) / f"dppo-warm-{os.getuid()}").glob("*.sock"))


def test_a_worker_killed_while_its_job_runs_loses_nothing(tmp_path, env):
    out = tmp_path / "who"
    proc = client(tmp_path, env, "record_when_told", out=str(out))
    job = psutil.Process(int(wait_for(out.with_suffix(".pid"))))
    worker = psutil.Process(job.ppid())
    assert worker.pid != proc.pid and worker.pid in {p.pid for p in workers(env)}
    worker.kill()
    gone(worker)
    out.with_suffix(".go").touch()  # the job goes on without its worker and finishes
    code, stderr = finish(proc)
    assert code == 0, stderr
    assert int(out.read_text().split()[0]) == job.pid


def test_the_worker_key_follows_the_sources_bytes(tmp_path):
    """A copy of dppo (the real sources stay untouched): a same-size edit whose mtime was put back,
    as ``cp -p`` or ``rsync -t`` leave it, changes the key."""
    package = tmp_path / "dppo"
    shutil.copytree(Path(warm.__file__).parents[1], package, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("warm_copy", package / "runtime" / "warm.py")
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    key = copy.worker_key(("dppo.train.preference",))
    source = package / "train" / "losses.py"
    before = source.stat()
    text = source.read_bytes()
    source.write_bytes(text.replace(b"a", b"b", 1))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert copy.worker_key(("dppo.train.preference",)) != key
    source.write_bytes(text)
    assert copy.worker_key(("dppo.train.preference",)) == key
