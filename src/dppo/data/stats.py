"""Reading a data preparation's ``stats.json`` (written by :mod:`dppo.data.prepare`: the cut-off,
row counts and drops by reason, one entry per split)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def read_stats(path) -> dict:
    """A data preparation's ``stats.json``."""
    return json.loads(Path(path).read_text())


def train_count(stats: Mapping, key: str) -> int:
    """A count of ``stats.json`` for the TRAIN split (the file keeps one per split)."""
    value = stats.get(key, 0)
    if key == "dropped":
        value = value.get("train", value) if isinstance(value, Mapping) else value
        return int(sum(value.values())) if isinstance(value, Mapping) else int(value)
    return int(value.get("train", 0)) if isinstance(value, Mapping) else int(value)
