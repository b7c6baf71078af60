"""The embedded default end to end: wall time, and per rule the jobs' start-up against their work,
for this tree and (optionally) an earlier commit side by side, in one invocation.

    python benchmarks/e2e.py                      # this tree only
    python benchmarks/e2e.py --baseline 7936581   # also that commit, run right after, same machine

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
import time
from collections import defaultdict
from pathlib import Path

from common import machine, work_directory

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"^dppo-timing (\{.*\})$", re.M)


def run_tree(tree: Path, workdir: Path, extra: list[str]) -> dict:
    """One fresh end-to-end run of ``tree``'s Snakefile and config.yaml."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(tree / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "all", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (workdir / "snakemake.out").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: snakemake failed (exit {done.returncode}); see {workdir / 'snakemake.out'}")
    jobs = len(re.findall(r"^Finished jobid", done.stdout + done.stderr, flags=re.M))
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
    args = parser.parse_args(argv)
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
