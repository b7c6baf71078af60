"""The study: the embedded task's evidence over replicated pipelines and designs of the pairs.

Each (design, world) is a whole run of the pipeline in its own directory,
``<directory>/<design>/world-<k>/``: the config files given (the embedded default and the study's
overlay), plus a generated overlay that sets ``world: k`` (its own data draw, init model, SFT
model, y_gen, reference log-probs and training seeds; dppo.settings.PipelineSettings.in_world)
and the design's flaw rates of the chosen and rejected answers. Snakemake builds each run's
per-prompt scores (rerunning only what changed); the study then reads them all and writes its
tables, figure and summary (dppo.evaluate.study, dppo.report.study) under ``<directory>``.

Runs go ``--cores`` at a time, each with ``--cores`` cores and one thread per job
(``--max-threads 1``): a job's thread count changes its float results, so the study's numbers do
not depend on how many cores ran it; and no core idles while one run's serial stages (SFT, y_gen,
the answers) go, nor while the last run goes alone. Each run's Snakemake output goes to its
``study.log``.

    python -m dppo.study [--configfile config.yaml configs/overlays/study.yaml] [--cores 2] [-- snakemake args]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dppo.config import load_settings, load_yaml, merged_config
from dppo.runtime.io import write_text
from dppo.settings import StudySettings

log = logging.getLogger(__name__)
REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = ("config.yaml", "configs/overlays/study.yaml")
# What the study reads from each run: Snakemake builds only these (and what they need).
RUN_TARGETS = ("results/tables/prompt_scores.parquet", "results/experiments.json", "results/tables/premise.json")
# The switches that change float results on x86 CPUs (README, "What identical numbers means").
KERNEL_VARIABLES = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Every job's threads, whatever --cores is: a job's thread count changes its float results.
THREADS_PER_JOB = 1


def run_directory(study: StudySettings, design: str, world: int) -> Path:
    return Path(study.directory) / design / f"world-{world}"


def world_overlay(study: StudySettings, design: str, world: int) -> dict:
    chosen, rejected = study.designs[design]
    return {"world": world, "synthetic": {"chosen_flaw_rate": chosen, "rejected_flaw_rate": rejected}}


def run_world(study: StudySettings, configs: list[Path], design: str, world: int, cores: int,
              extra: list[str]) -> None:
    """One (design, world) through Snakemake, one thread per job, in its own directory (output: its study.log)."""
    directory = run_directory(study, design, world)
    directory.mkdir(parents=True, exist_ok=True)
    overlay = directory / "study_overlay.json"  # JSON is YAML: Snakemake reads it as a config file
    write_text(overlay, json.dumps(world_overlay(study, design, world), indent=1) + "\n")
    # the targets first: --configfile takes every word after it up to the next option
    command = [sys.executable, "-m", "snakemake", *RUN_TARGETS, "--snakefile", str(REPOSITORY / "Snakefile"),
               "--directory", str(directory), "--cores", str(cores), "--max-threads", str(THREADS_PER_JOB),
               "--configfile", *[str(p.resolve()) for p in configs], str(overlay.resolve()), *extra]
    log.info("study: %s world %d: %s", design, world, " ".join(command))
    started = time.monotonic()
    with (directory / "study.log").open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{design} world {world}: Snakemake failed ({done.returncode}); see {directory / 'study.log'}")
    log.info("study: %s world %d done in %.0f s", design, world, time.monotonic() - started)


def run_all(study: StudySettings, configs: list[Path], cores: int, extra: list[str]) -> None:
    """Every (design, world) run, ``cores`` at a time; a failed run stops the ones not yet
    started, and the error names every failed run's log."""
    cells = [(design, world) for design in study.designs for world in range(study.worlds)]
    failed: list[str] = []

    def run(cell):
        if not failed:
            try:
                run_world(study, configs, *cell, cores, extra)
            except RuntimeError as error:
                failed.append(str(error))

    with ThreadPoolExecutor(max_workers=max(1, cores)) as pool:
        list(pool.map(run, cells))
    if failed:
        raise SystemExit("study: " + "; ".join(failed))


def collect(study: StudySettings) -> tuple[pd.DataFrame, list[dict]]:
    """Every run's per-(experiment, seed, prompt) scores with its design and world, and the
    experiments' settings (checked to be the same in every run but for the seeds)."""
    frames, experiments = [], None
    for design in study.designs:
        for world in range(study.worlds):
            directory = run_directory(study, design, world)
            scores = pd.read_parquet(directory / RUN_TARGETS[0])
            frames.append(scores.rename(columns={"name": "experiment"}).assign(design=design, world=world))
            listed = json.loads((directory / RUN_TARGETS[1]).read_text())
            listed = [{k: v for k, v in e.items() if k != "seeds"} for e in listed]
            if experiments is None:
                experiments = listed
            elif listed != experiments:
                raise ValueError(f"{directory}: its experiments differ from the other runs' (a changed config "
                                 "between runs?); rerun the study")
    return pd.concat(frames, ignore_index=True), experiments


def write_provenance(directory: Path, snakemake_args: list[str], at_once: int) -> None:
    """What the study's numbers are conditional on, written before its runs: the commit, the CPU,
    the float-kernel switches, the threads per job (one) and the Snakemake options, the date (the
    tables carry it as ``provenance``)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    record = {"commit": git("rev-parse", "--short=12", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain")),
              "cpu": cpu or "unknown", "cores": os.cpu_count(), "platform": platform.platform(),
              "kernels": {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ},
              "threads_per_job": THREADS_PER_JOB, "runs_at_once": at_once, "snakemake_args": list(snakemake_args),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    path = directory / "provenance.json"
    if path.exists():  # runs made earlier in this directory are kept, not rerun: keep their record too
        earlier = json.loads(path.read_text())
        record["earlier"] = [*earlier.pop("earlier", []), earlier]
    write_text(path, json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dppo.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", type=Path, default=[REPOSITORY / c for c in DEFAULT_CONFIGS])
    parser.add_argument("--cores", type=int, default=2, help="runs at once, and each run's cores")
    parser.add_argument("--aggregate-only", action="store_true", help="read the runs that exist; run nothing")
    parser.add_argument("--designs", nargs="+", help="only these designs of the study section")
    parser.add_argument("--worlds", type=int, help="only worlds 0 .. N-1")
    parser.add_argument("--directory", help="another directory for the study (study.directory)")
    parser.add_argument("snakemake_args", nargs="*", help="options passed to every Snakemake run (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings(merged_config([load_yaml(p) for p in args.configfile]))
    study = settings.study
    unknown = sorted(set(args.designs or ()) - set(study.designs))
    if unknown:
        parser.error(f"--designs: {unknown[0]!r} is not a design of the study section ({', '.join(study.designs)})")
    study = replace(study, designs={d: r for d, r in study.designs.items() if d in (args.designs or study.designs)},
                    worlds=args.worlds or study.worlds, directory=args.directory or study.directory)
    if not args.aggregate_only:
        write_provenance(Path(study.directory), args.snakemake_args, args.cores)
        run_all(study, args.configfile, args.cores, args.snakemake_args)
    from dppo.report.study import write_study

    table, experiments = collect(study)
    write_study(table, experiments, study, Path(study.directory))


if __name__ == "__main__":
    main()
