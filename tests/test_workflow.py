"""The workflow itself: dry runs of every shipped config, the linter, one tiny end-to-end run
on CPU, and that changing one experiment reruns only what depends on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dppo.config import expand_experiments

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SHIPPED_CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory."""
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    input: .*\n)?    output: ([^,\n]+)", dry_run_output, flags=re.M)
    return [(rule, output) for rule, output in jobs if rule != "all"]


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_shipped_config(config, tmp_path):
    done = snakemake(tmp_path, "all", "-n", "--configfile", str(config))
    n_experiments = len(expand_experiments(yaml.safe_load(config.read_text())))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout, flags=re.M))
    assert int(counts["train_preference"]) == n_experiments
    assert int(counts["generate_eval"]) == int(counts["score"]) == n_experiments + 1  # + the SFT model


def test_lint_is_clean(tmp_path):
    done = snakemake(tmp_path, "--lint", "--configfile", str(ROOT / "configs" / "tiny.yaml"), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["experiments"]["dpo"]["zeta"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert done.returncode != 0
    assert "config key experiments.dpo.zeta: 2 is greater than the maximum of 1" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config end to end (every stage, figure and table) in a fresh directory."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    shutil.copy(ROOT / "configs" / "tiny.yaml", workdir / "tiny.yaml")
    snakemake(workdir, "all", "--cores", "2", "--configfile", str(workdir / "tiny.yaml"))
    return workdir


@pytest.mark.slow
def test_tiny_end_to_end_run_produces_every_result(tiny_run):
    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    stats = json.loads((tiny_run / "results/data/pref/stats.json").read_text())
    assert stats["cutoff"] > 0 and stats["rows_kept"]["train"] > 0
    table = pd.read_csv(tiny_run / "results/tables/win_rates.csv")
    assert set(table["name"]) == {"dpo", "unll__f=linear", "conll__alpha=0.5", "dpo_small", "unll_then_dpo", "ipo"}
    assert table["win_rate"].between(0, 1).all()
    assert (table["ci_low"] <= table["win_rate"]).all() and (table["win_rate"] <= table["ci_high"]).all()
    for name in table["name"]:
        metrics = [json.loads(line) for line in (tiny_run / f"results/metrics/{name}.jsonl").read_text().splitlines()]
        assert metrics and all(key in metrics[0] for key in ("loss", "dpo", "logp_chosen", "logp_rejected", "grad_norm"))
    unll_metrics = (tiny_run / "results/metrics/unll__f=linear.jsonl").read_text().splitlines()
    assert all(json.loads(line)["logp_gen"] is not None for line in unll_metrics)
    for fig in ("hparam_search", "paradigms", "reward_hist", "data_efficiency", "dynamics", "length_dist"):
        assert (tiny_run / f"paper/figures/{fig}.pdf").stat().st_size > 0
    assert "\\newcommand" in (tiny_run / "paper/tables/macros.tex").read_text()
    assert (tiny_run / "paper/build.log").exists()
    scores = pd.read_parquet(tiny_run / "results/scores/sft.parquet")
    assert len(scores) == config["data"]["pref"]["max_eval_prompts"]


@pytest.mark.slow
def test_chained_experiment_starts_from_the_named_experiment(tiny_run):
    from dppo.io import weights_digest

    record = json.loads((tiny_run / "results/models/unll_then_dpo/dppo_training.json").read_text())
    assert record["init"] == "results/models/unll__f=linear"
    assert record["init_sha256"] == weights_digest(tiny_run / "results/models/unll__f=linear")
    sft_record = json.loads((tiny_run / "results/models/dpo/dppo_training.json").read_text())
    assert sft_record["init_sha256"] == weights_digest(tiny_run / "results/models/sft")


@pytest.mark.slow
def test_changing_one_alpha_reruns_only_that_experiment_and_its_dependents(tiny_run):
    nothing = snakemake(tiny_run, "all", "-n", "--configfile", str(tiny_run / "tiny.yaml"))
    assert planned_jobs(nothing.stdout) == [], nothing.stdout

    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    config["experiments"]["unll"]["alpha"] = 0.3  # unll__f=linear; unll_then_dpo starts from it
    changed = tiny_run / "changed.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = planned_jobs(snakemake(tiny_run, "all", "-n", "--configfile", str(changed)).stdout)
    trained = sorted(out for rule, out in jobs if rule == "train_preference")
    assert trained == ["results/models/unll__f=linear", "results/models/unll_then_dpo"]
    evaluated = sorted(out for rule, out in jobs if rule in ("generate_eval", "score"))
    assert all("unll" in out for out in evaluated) and len(evaluated) == 4
    upstream = {"make_synthetic", "init_model", "prepare_data", "sft", "pregenerate", "ref_logps"}
    assert not upstream & {rule for rule, _ in jobs}
