"""Running the repository's Snakefile from tests: one helper, and the tiny config end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory (``env`` on top of
    this process's environment)."""
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def run_tiny(workdir: Path) -> Path:
    """configs/tiny.yaml's ``all`` (every stage, figure and table) in ``workdir``."""
    shutil.copy(ROOT / "configs" / "tiny.yaml", workdir / "tiny.yaml")
    snakemake(workdir, "all", "--cores", "2", "--configfile", str(workdir / "tiny.yaml"))
    return workdir
