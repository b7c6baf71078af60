"""Helpers the benchmark scripts share: process memory, the machine line, table cells, the CSV
with its settings header, whether TRL is installed, and a timed Snakemake run."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def proc_status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS now, VmHWM the peak of this process image:
    getrusage's ru_maxrss would carry the parent's peak over a fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def machine() -> str:
    """The processor, the number of CPUs and the load average when the benchmark started."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average at start "
            f"{os.getloadavg()[0]:.2f}")


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def has_trl() -> bool:
    return importlib.util.find_spec("trl") is not None


@contextmanager
def work_directory(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards unless ``keep`` (then its path is printed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_csv(path: Path, results: dict, header: str, key: str, descriptions: dict, fields: list[str],
              json_fields: tuple[str, ...] = ("settings",)) -> None:
    """One row per result (``key`` its name, ``description`` from ``descriptions``), the header's
    lines as ``#`` comments first; ``json_fields`` are written as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        for line in header.splitlines():
            fh.write(f"# {line}\n")
        writer = csv.DictWriter(fh, fieldnames=[key, "description", *fields], extrasaction="ignore")
        writer.writeheader()
        for name, r in results.items():
            encoded = {f: json.dumps(r[f]) if f in r else "" for f in json_fields}
            writer.writerow({key: name, "description": descriptions[name], **r, **encoded})


def publish(header: str, table: str, write, path: Path, results: dict) -> None:
    """Print the settings header and the table, and write ``results`` with ``write`` to ``path``."""
    print("\n" + header + "\n" + table)
    write(path, results, header + table)
    print(f"\nwrote {path}")


# The line dppo.runtime.stage logs for every job: its start-up and its work, in seconds.
TIMING = re.compile(r"^dppo-timing (\{.*\})$", re.M)


def run_snakemake(args: list[str], workdir: Path, env: dict, what: str = "snakemake") -> tuple[float, str]:
    """``python -m snakemake *args`` in ``env``, timed: (wall seconds, its output, also written to
    ``workdir/snakemake.out``); exits naming that file if Snakemake fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    (workdir / "snakemake.out").write_text(output)
    if done.returncode != 0:
        raise SystemExit(f"{what}: snakemake failed (exit {done.returncode}); see {workdir / 'snakemake.out'}")
    return wall, output
