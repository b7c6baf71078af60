"""The embedded default end to end: wall time, and per rule the jobs' start-up against their work,
for this tree and (optionally) an earlier commit side by side, in one invocation.

    python benchmarks/e2e.py                      # this tree only
    python benchmarks/e2e.py --baseline 7936581   # also that commit, run right after, same machine
    python benchmarks/e2e.py --study runs/study    # the times of a study already run (make study)

Each tree runs ``snakemake --cores 2 all`` on its own ``config.yaml`` in a fresh directory, with
its own ``src`` first on PYTHONPATH (one installed environment serves both). Per job the rule
logs a ``dppo-timing`` line (dppo.runtime.stage): start-up = process start to the script body (the
interpreter, Snakemake's script preamble, the imports), work = the body. A tree whose jobs do
not log it (an older commit) gets wall times only. Absolute seconds differ between machines
(two of ours differ about 2.5x); compare trees of one invocation, by their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from common import TIMING, machine, run_snakemake, work_directory

ROOT = Path(__file__).resolve().parents[1]


def run_tree(tree: Path, workdir: Path, extra: list[str]) -> dict:
    """One fresh end-to-end run of ``tree``'s Snakefile and config.yaml."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    wall, output = run_snakemake(["--snakefile", str(tree / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                                  "all", *extra], workdir, env, what=str(tree))
    jobs = len(re.findall(r"^Finished jobid", output, flags=re.M))
    return {"wall_s": wall, "jobs": jobs, "rules": per_rule(workdir)}


def per_rule(workdir: Path) -> dict[str, dict]:
    """rule -> jobs, summed start-up and work (from the rule logs' dppo-timing lines)."""
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "startup_s": 0.0, "work_s": 0.0})
    for log in (workdir / "logs").rglob("*.log"):
        for match in TIMING.finditer(log.read_text(errors="replace")):
            timing = json.loads(match.group(1))
            row = rules[timing["rule"]]
            row["jobs"] += 1
            row["startup_s"] += timing["startup_s"] or 0.0
            row["work_s"] += timing["work_s"]
    return dict(rules)


def table(name: str, result: dict) -> str:
    lines = [f"{name}: wall {result['wall_s']:.1f} s, {result['jobs']} jobs"]
    rules = result["rules"]
    if not rules:
        return lines[0] + " (its jobs log no start-up/work timing)"
    lines.append(f"  {'rule':<22} {'jobs':>4} {'job s':>8} {'work s':>8} {'start-up s':>10} {'start-up %':>10}")
    total = {"jobs": 0, "startup_s": 0.0, "work_s": 0.0}
    for rule, row in sorted(rules.items(), key=lambda kv: -(kv[1]["work_s"] + kv[1]["startup_s"])):
        job = row["startup_s"] + row["work_s"]
        lines.append(f"  {rule:<22} {row['jobs']:>4} {job:>8.1f} {row['work_s']:>8.1f} {row['startup_s']:>10.1f} "
                     f"{100 * row['startup_s'] / job:>9.0f}%")
        for key in total:
            total[key] += row[key]
    job = total["startup_s"] + total["work_s"]
    lines.append(f"  {'all jobs':<22} {total['jobs']:>4} {job:>8.1f} {total['work_s']:>8.1f} {total['startup_s']:>10.1f} "
                 f"{100 * total['startup_s'] / job:>9.0f}%")
    return "\n".join(lines)


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)


def study_times(directory: Path) -> dict:
    """The wall time of each (design, world) run of a study already run (``make study``), from
    the first and last job stamps of its newest Snakemake log, and its jobs' start-up and work
    per rule; a run with nothing to do (kept from an earlier study) has no jobs and counts 0 s.
    ``wall_s``: the first job stamp of any run to the last of any (runs go at once)."""
    from datetime import datetime

    cells, rules, stamps = [], defaultdict(lambda: {"jobs": 0, "startup_s": 0.0, "work_s": 0.0}), []
    for run in sorted(directory.glob("*/world-*")):
        logs = sorted((run / ".snakemake" / "log").glob("*.snakemake.log"))
        text = logs[-1].read_text() if logs else ""
        times = [datetime.strptime(" ".join(t.split()), "%a %b %d %H:%M:%S %Y") for t in STAMP.findall(text)]
        stamps += times
        cells.append({"run": str(run.relative_to(directory)), "wall_s": (times[-1] - times[0]).total_seconds()
                      if times else 0.0, "jobs": len(re.findall(r"^Finished jobid", text, flags=re.M))})
        for rule, row in per_rule(run).items():
            for key in row:
                rules[rule][key] += row[key]
    wall = (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0
    return {"cells": cells, "wall_s": wall, "rules": dict(rules)}


def baseline_tree(ref: str, parent: Path) -> Path:
    """``ref`` of this repository as a plain directory (git archive)."""
    tree = parent / f"tree-{ref}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a commit to run right after this tree, on the same machine")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--study", type=Path, help="report the times of a study already run there (make study: "
                                                   "runs/study) instead of running the embedded default")
    args = parser.parse_args(argv)
    if args.study:
        result = study_times(args.study)
        print(f"study {args.study}: {len(result['cells'])} runs, {result['wall_s'] / 60:.1f} min from the first job to "
              f"the last (the runs' own start-up and the aggregation come on top); each run, first to last job:")
        for cell in result["cells"]:
            print(f"  {cell['run']:<32} {cell['wall_s']:>7.0f} s")
        print(table("all runs' jobs", {**result, "jobs": sum(c["jobs"] for c in result["cells"])}))
        return 0
    print(f"machine: {machine()}; snakemake --cores 2 all on each tree's config.yaml, fresh directories", flush=True)
    with work_directory("dppo_e2e_", keep=args.keep) as work:
        results = {"this tree": run_tree(ROOT, work / "this", [])}
        print(table("this tree", results["this tree"]), flush=True)
        if args.baseline:
            tree = baseline_tree(args.baseline, work)
            results[args.baseline] = run_tree(tree, work / "baseline", [])
            print(table(args.baseline, results[args.baseline]), flush=True)
            ratio = results["this tree"]["wall_s"] / results[args.baseline]["wall_s"]
            print(f"wall time, this tree / {args.baseline}: {ratio:.2f}")
        (ROOT / "benchmarks" / "e2e.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
