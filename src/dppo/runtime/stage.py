"""What every workflow script does first: log to the rule's log file, use the rule's threads,
and record how long the job took to start against how long it worked."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TIMING_MARK = "dppo-timing"  # benchmarks/e2e.py reads these lines from the rule logs


def limit_threads(threads: int) -> None:
    """Use ``threads`` CPU threads: torch now if it is imported, and any BLAS or torch imported
    later (through the environment, so a plotting job never imports torch for this)."""
    threads = max(1, int(threads))
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def process_start_time() -> float | None:
    """When this process started (epoch seconds, Linux /proc), or None where unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


@contextlib.contextmanager
def stage(snakemake, started: float | None = None):
    """Send logging, stdout and stderr (progress bars included) to the rule's log file and
    limit the job to the rule's threads; re-raise any error after logging it. On success the
    log ends with one ``dppo-timing`` line: start-up (process start to here: the interpreter,
    Snakemake's script preamble, the script's imports) and work (the body). ``started``: when
    the job's process started, where that is not this process (a warm worker's child)."""
    entered = time.time()
    started = started or process_start_time()
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
        limit_threads(snakemake.threads)
        try:
            yield
        except Exception:
            logging.exception("rule %s failed", snakemake.rule)
            print(f"rule {snakemake.rule} failed; see {log_path}", file=sys.__stderr__)
            raise
        timing = {"rule": snakemake.rule, "startup_s": round(entered - started, 3) if started else None,
                  "work_s": round(time.time() - entered, 3)}
        print(f"{TIMING_MARK} {json.dumps(timing)}", file=fh)
