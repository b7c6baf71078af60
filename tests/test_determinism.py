"""Same config and seed on CPU, two runs in two fresh directories (the shared tiny run and one
more): bit-identical data, models, per-step metrics, greedy generations and scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from pipeline import ROOT, run_tiny

from dppo.config import expand_experiments

pytestmark = [pytest.mark.slow, pytest.mark.long]  # a second pipeline run: make test-all and CI
EXPERIMENTS = list(expand_experiments(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())))


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    return [tiny_run, run_tiny(tmp_path_factory.mktemp("tiny_again"))]


def _weights(run, name):
    directory = run / "results/models" / name
    return sorted(directory.glob("**/model.safetensors")) if name != "sft" else [directory / "model.safetensors"]


@pytest.mark.parametrize("name", ["sft", *EXPERIMENTS])
def test_metrics_models_generations_and_scores_are_bit_identical(two_runs, name):
    first, second = two_runs
    metrics = [[json.loads(line) for line in (run / f"results/metrics/{name}.jsonl").read_text().splitlines()]
               for run in two_runs]
    assert len(metrics[0]) > 0 and all(m["loss"] == m["loss"] for m in metrics[0])  # real, finite steps
    assert metrics[0] == metrics[1]  # exact float equality, every key of every step
    weights = [_weights(run, name) for run in two_runs]
    assert weights[0] and [w.relative_to(first) for w in weights[0]] == [w.relative_to(second) for w in weights[1]]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*weights))
    for table in (f"results/generations/{name}.parquet", f"results/scores/{name}.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / table), pd.read_parquet(second / table), check_exact=True)


@pytest.mark.parametrize("table", ["data/pref/train.parquet", "data/sft/train.parquet", "ygen/train.parquet",
                                   "ref_logps/train.parquet", "tables/win_rates.csv", "tables/claims.csv"])
def test_shared_stages_and_tables_are_bit_identical(two_runs, table):
    first, second = ((run / "results" / table).read_bytes() for run in two_runs)
    assert first == second
