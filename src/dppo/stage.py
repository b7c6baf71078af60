"""What every workflow script does first: log to the rule's log file and use its threads."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Use ``threads`` CPU threads: torch now if it is imported, and any BLAS or torch imported
    later (through the environment, so a plotting job never imports torch for this)."""
    threads = max(1, int(threads))
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def stage(snakemake):
    """Send logging, stdout and stderr (progress bars included) to the rule's log file and
    limit the job to the rule's threads; re-raise any error after logging it."""
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
