"""A warm worker: on a laptop the embedded default runs dozens of short training jobs, and each
fresh process spends about 3 s importing torch and transformers' model stack before it trains
for 10. The worker imports them once; every job process (the "client", what Snakemake started)
hands its job to it, and the worker forks a child that has the imports already and runs the job.

What stays as it was for a job:
- its own process for the work: every job is a fresh fork of a worker that never runs a job
  itself, so no state passes from one job to the next;
- its log, stdout and stderr (the client passes its file descriptors), its working directory;
- its exit status (a child killed by a signal kills the client with that signal): the child
  reports it over the client's connection itself, so a worker killed meanwhile loses no finished
  job (nor kills running ones); the worker reports only what the child cannot, a death by signal;
- kills: SIGTERM and SIGINT sent to the client are forwarded to the child (a SLURM-style time
  limit still checkpoints); a client that dies without a word (SIGKILL) closes its connection,
  and the child then kills itself, so no orphan trains on;
- start-up is measured from the client's start, so the ``dppo-timing`` line stays honest.

A worker is keyed by everything that decides what a fresh process would import and compute: the
interpreter, the full environment (but the shell's PWD and OLDPWD, which the child takes from
its client), the dppo sources (paths and contents) and the installed packages it preloads. A job
whose key differs (an edited source file, another PYTHONPATH) starts its own worker; an idle
worker exits after ``IDLE_S`` seconds. Sockets live in a directory private to the user
(``$XDG_RUNTIME_DIR/dppo-warm``, else ``$TMPDIR/dppo-warm-<uid>``). Off (the job runs in its own
process, as before) under SLURM, for GPU or torchrun jobs, off Linux, and with
``DPPO_WARM_WORKER=0``; ``DPPO_WARM_IDLE_S`` sets the idle time. Whatever goes wrong before a
child starts the job (a socket directory that is not private, a full disk, a worker that dies)
raises ``Unavailable``, and the job runs in its own process after one warning line. Snakemake's
``benchmark:`` files cover the client only: measure a job's memory with the worker off.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

SWITCH = "DPPO_WARM_WORKER"  # "0" runs every job in its own fresh process
IDLE_S = float(os.environ.get("DPPO_WARM_IDLE_S", "60"))  # a worker with no job for this long exits
START_TIMEOUT_S = 120.0  # a worker that has not bound its socket by then is given up on
PER_DIRECTORY = ("PWD", "OLDPWD")  # the shell's, differ per working directory: set in the child, not keyed
HEAVY_PACKAGES = ("torch", "transformers")  # installed packages whose change must not reach a live worker
# What is imported before a job's module, per job module, and why: a job module imports torch
# itself, but transformers imports its model classes lazily, at the job's first model load (about
# 1.5 s; more on a busy machine). Preloaded (import_preloads), that cost is start-up, not the
# job's work: paid once per worker, or before stage() by a job that runs in its own process.
MODEL_STACK = ("transformers.modeling_utils",)  # PreTrainedModel, the base of every model class
PRELOAD = {
    "dppo.train.preference": MODEL_STACK,  # loads the policy (the reference's log-probs come from a cache)
    "dppo.train.sft": MODEL_STACK,  # loads the model it fine-tunes
    "dppo.train.reference": MODEL_STACK,  # loads the reference model to cache its log-probs
    "dppo.infer.answers": MODEL_STACK,  # loads every model it generates answers with
    "dppo.data.tiny_model": MODEL_STACK,  # builds the embedded default's initial model
}
_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def job_preload(job_module: str) -> tuple[str, ...]:
    """What a worker for a job of ``job_module`` imports: for the pipeline's jobs (:data:`PRELOAD`)
    every one of their modules, so that one worker (one key) serves all of a run's jobs and only
    its first pays the imports; another module (a test's) alone."""
    return tuple(PRELOAD) if job_module in PRELOAD else (job_module,)


def import_preloads(job_module: str) -> None:
    """Import what :data:`PRELOAD` lists for ``job_module`` (nothing for a module it does not list)."""
    for name in PRELOAD.get(job_module, ()):
        importlib.import_module(name)


def usable(n_gpus: int = 0) -> bool:
    """Whether a job may go to a warm worker here (see the module docstring for when it may not)."""
    return (os.environ.get(SWITCH, "1") != "0" and n_gpus == 0 and sys.platform == "linux"
            and not any(v in os.environ for v in ("SLURM_JOB_ID", "LOCAL_RANK")))


class Unavailable(Exception):
    """No warm worker took the job (the message says why): the caller runs it in its own process."""


def worker_key(preload: tuple[str, ...]) -> str:
    """What a fresh process would import and compute with; equal keys may share a worker."""
    package = Path(__file__).resolve().parent.parent  # the whole dppo package
    # Contents, not sizes and mtimes: cp -p, rsync -t and tar restore an edited file's mtime
    sources = [[str(p), hashlib.sha256(p.read_bytes()).hexdigest()] for p in sorted(package.rglob("*.py"))]
    installed = []  # an installed package's files are rewritten, never edited in place: mtimes suffice
    for name in sorted({m.split(".")[0] for m in preload} | set(HEAVY_PACKAGES)):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            info = Path(spec.origin).stat()
            installed.append([spec.origin, info.st_size, info.st_mtime_ns])
    env = sorted((k, v) for k, v in os.environ.items() if k not in PER_DIRECTORY)
    state = {"python": [sys.executable, sys.version], "env": env,
             "preload": list(preload), "sources": sources, "installed": installed}
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:20]


def _private(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link to one) of this user that no one else may enter."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def worker_dir() -> Path:
    """Where workers' sockets live (a socket path must stay short): a directory only this user may
    enter, in the user's runtime directory where it has a private one. In the shared temporary
    directory anyone can create the name first; such a directory is never used (Unavailable)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and _private(Path(runtime)):
        path = Path(runtime) / "dppo-warm"
    else:
        path = Path(tempfile.gettempdir()) / f"dppo-warm-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if not _private(path):
        raise Unavailable(f"{path} is not private (it must be a directory of uid {os.getuid()} with mode 0700); "
                          "remove it")
    return path


# --- the client: what the job's own process does ------------------------------------------------

def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _worker_log(path: Path) -> Path:
    """Where the worker on socket ``path`` prints (its own errors; jobs print to their clients' fds)."""
    return path.with_suffix(".log")


def _start_worker(path: Path, preload: tuple[str, ...]) -> subprocess.Popen:
    log = _worker_log(path).open("ab")
    # -P: no script directory or cwd on sys.path, so the worker imports exactly what the key names
    return subprocess.Popen([sys.executable, "-P", "-m", "dppo.runtime.warm", str(path), str(Path(__file__).resolve()),
                             *preload], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def connect_worker(preload: tuple[str, ...]) -> socket.socket:
    """A connection to a live worker with this key, starting one if there is none."""
    path = worker_dir() / f"{worker_key(preload)}.sock"
    sock = _connect(path)
    if sock is not None:
        return sock
    # One lock for all keys, so no lock file per key piles up: a worker binds in well under a
    # second, but one that never binds makes other keys' first jobs wait up to START_TIMEOUT_S too
    with (path.parent / "start.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one job starts the worker; the others wait, then connect
        sock = _connect(path)
        if sock is not None:
            return sock
        path.unlink(missing_ok=True)  # a dead worker's socket
        worker = _start_worker(path, preload)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and worker.poll() is None:
            sock = _connect(path) if path.exists() else None
            if sock is not None:
                return sock
            time.sleep(0.02)
        if worker.poll() is None:
            worker.kill()
            raise Unavailable(f"no worker listened on {path} within {START_TIMEOUT_S:g} s")
        raise Unavailable(f"the worker exited ({worker.returncode}) before listening; see {_worker_log(path)}")


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    payload = json.dumps(message).encode()
    socket.send_fds(sock, [_HEADER.pack(len(payload)) + payload], list(fds))


def _receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while len(data) < _HEADER.size:
        chunk, more_fds, _, _ = socket.recv_fds(sock, _HEADER.size - len(data), max_fds)
        if not chunk:
            raise ConnectionError("connection closed")
        data, fds = data + chunk, fds + more_fds
    (size,) = _HEADER.unpack(data)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("connection closed")
        body += chunk
    return json.loads(body), fds


def _unavailable(error: Exception) -> Unavailable:
    if isinstance(error, Unavailable):
        return error
    return Unavailable(f"{type(error).__name__}: {error}".replace("\n", " "))


def submit(call: str, kwargs: dict, preload: tuple[str, ...]) -> int:
    """Run ``call(**kwargs)`` ("module:function") in a fresh child of a warm worker that has
    imported ``preload``; return the child's exit status (negative: killed by that signal). Raises
    Unavailable if no child started the job: the caller then runs it itself."""
    try:
        sock = connect_worker(preload)
    except Exception as error:  # whatever it is, the job can still run in this process
        raise _unavailable(error) from error
    child: list[int] = []
    pending: list[int] = []

    def forward(signum, _frame):
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        with sock:
            request = {"call": call, "kwargs": kwargs, "cwd": os.getcwd(),
                       "shell": {k: os.environ.get(k) for k in PER_DIRECTORY}}
            # The child sends its pid before it starts the job, then its exit status; the worker
            # sends the status too (the only one there is if the child died by a signal).
            try:
                _send(sock, request, [0, 1, 2])
                while True:
                    message = _receive(sock)[0]
                    if "status" in message:
                        return int(message["status"])
                    child.append(int(message["pid"]))
                    for signum in pending:
                        forward(signum, None)
            except Exception as error:
                if not child:  # no child started the job: it is still this process's to run
                    raise _unavailable(error) from error
                print(f"dppo warm worker: the job's child {child[0]} and its worker ended without its exit status "
                      f"({error!r})", file=sys.stderr)
                return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_with(status: int) -> None:
    """End this process as the job's child ended: the same exit code, or the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if status < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's handler cannot be set (nor need be)
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if status >= 0 else 128 - status)


# --- the worker ------------------------------------------------------------------------------

def _call(call: str, kwargs: dict) -> None:
    """In the child: what the job's own process would have run (dppo.runtime.launch's run_in_stage)."""
    module, _, name = call.partition(":")
    getattr(importlib.import_module(module), name)(**kwargs)


def _die_with_client(conn: socket.socket) -> None:
    """In the child: the client sends nothing after its request, so end-of-file means it died."""
    def watch():
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _child(listener: socket.socket, others: list[socket.socket], conn: socket.socket, request: dict,
           fds: list[int]) -> None:
    """Never returns."""
    status = 1
    try:
        for sock in (listener, *others):  # other jobs' connections: their clients must see the worker's end
            sock.close()
        for s in _FORWARDED:
            signal.signal(s, signal.SIG_DFL)
        _send(conn, {"pid": os.getpid()})
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        for name, value in request["shell"].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _die_with_client(conn)
        _call(request["call"], request["kwargs"])
        status = 0
    except SystemExit as stop:  # as Python itself exits on it
        if stop.code is None or isinstance(stop.code, int):
            status = (stop.code or 0) & 0xFF
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):  # from here, not only the worker: it may be dead by now
            _send(conn, {"status": status})
        os._exit(status)


def serve(path: Path, preload: tuple[str, ...], idle_s: float = IDLE_S) -> None:
    """Accept jobs on ``path`` until idle for ``idle_s`` or until the socket file is replaced.
    One thread only: forking from a threaded process can copy a lock another thread holds."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    inode = path.stat().st_ino
    for module in preload:  # after bind: the first clients wait in the backlog, not in a retry loop
        import_preloads(module)
        importlib.import_module(module)
    running: dict[int, socket.socket] = {}
    last_busy = time.monotonic()
    while True:
        ready, _, _ = select.select([listener], [], [], 0.1)
        if ready:
            conn, _ = listener.accept()
            try:
                conn.settimeout(10)
                request, fds = _receive(conn, max_fds=3)
                conn.settimeout(None)
            except (OSError, ValueError) as error:
                print(f"bad request: {error!r}", file=sys.stderr, flush=True)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                _child(listener, list(running.values()), conn, request, fds)
            for fd in fds:
                os.close(fd)
            running[pid] = conn
        while running:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = running.pop(pid)
            with contextlib.suppress(OSError):
                _send(conn, {"status": os.waitstatus_to_exitcode(wait_status)})
            conn.close()
        if running:
            last_busy = time.monotonic()
            continue
        try:
            replaced = path.stat().st_ino != inode
        except FileNotFoundError:
            replaced = True
        if replaced or time.monotonic() - last_busy > idle_s:
            break
    if not replaced:
        # An empty log goes while the socket still answers, so no new worker can have opened it yet;
        # one that says something (a worker's error) stays.
        log = _worker_log(path)
        with contextlib.suppress(FileNotFoundError):
            if log.stat().st_size == 0:
                log.unlink()
        path.unlink(missing_ok=True)  # before closing: a client that cannot connect now starts a new worker
    listener.close()


if __name__ == "__main__":
    socket_path, expected_module, *modules = sys.argv[1:]
    if str(Path(__file__).resolve()) != expected_module:  # -P: the client's dppo, not another one
        raise SystemExit(f"this worker's dppo is {__file__}, the client's {expected_module}")
    serve(Path(socket_path), tuple(modules))
