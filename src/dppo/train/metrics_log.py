"""The per-step metrics log of a run (``metrics.jsonl``), cut back to the step a resumed run
continues from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dppo.runtime.io import write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """One JSON line per optimizer step. On resume it is cut back to the checkpoint's step; a
    torn or unreadable line (a kill mid-write, bytes that are not UTF-8 JSON) is dropped with a
    warning."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = []
        if resume_step and path.exists():
            for number, raw in enumerate(path.read_bytes().splitlines(), 1):
                try:
                    line = raw.decode("utf-8")
                    record = json.loads(line)  # UnicodeDecodeError is a ValueError too
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    log.warning("dropping a torn line %d of %s", number, path)
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        write_text(path, "".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
