"""Job functions for tests/test_warm.py: imported by the warm worker (and the client, when it runs
a job itself), so they stay free of torch."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

if os.environ.get("WARM_JOBS_SLOW_IMPORT"):
    time.sleep(float(os.environ["WARM_JOBS_SLOW_IMPORT"]))  # a worker still importing its modules


def record(out: str) -> None:
    """Who ran the job: its pid, its parent's, its working directory and $PWD; a line straight to fd 2."""
    Path(out).write_text(f"{os.getpid()} {os.getppid()} {os.getcwd()} {os.environ.get('PWD')}")
    os.write(2, b"written to the job's own stderr\n")
    print("printed to the log")


def fail(message: str) -> None:
    raise ValueError(message)


def exit_with(code: int) -> None:
    sys.exit(code)


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_sigterm(out: str) -> None:
    """Write the pid, then wait; SIGTERM makes it note that and exit 7 (a job's own handler)."""
    def handler(signum, _frame):
        Path(out).with_suffix(".term").write_text("terminated")
        raise SystemExit(7)

    signal.signal(signal.SIGTERM, handler)
    Path(out).write_text(str(os.getpid()))
    time.sleep(60)


def record_when_told(out: str) -> None:
    """Write the pid to ``out``.pid, wait until ``out``.go exists, then ``record``."""
    Path(out).with_suffix(".pid").write_text(str(os.getpid()))
    while not Path(out).with_suffix(".go").exists():
        time.sleep(0.02)
    record(out)
