"""What every workflow script does first: log to the rule's log file and use its threads."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def stage(snakemake):
    """Send logging, stdout and stderr (progress bars included) to the rule's log file and
    limit torch to the rule's threads; re-raise any error after logging it."""
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        logging.basicConfig(stream=fh, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
        try:
            import torch

            torch.set_num_threads(max(1, int(snakemake.threads)))
        except ImportError:  # plotting environments have no torch
            pass
        try:
            yield
        except Exception:
            logging.exception("rule %s failed", snakemake.rule)
            print(f"rule {snakemake.rule} failed; see {log_path}", file=sys.__stderr__)
            raise
