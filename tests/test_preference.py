"""Preference stage: the reference cache equals a fresh computation, nested subsets, and a
short training run that logs every loss part per step."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from dppo.settings import Experiment, LossSettings, OptimSettings
from dppo.train.logprobs import response_logps
from dppo.train.preference import experiment_job
from dppo.train.reference import cache_reference_logps
from dppo.train.rows import REF_COLUMNS, subset_indices


def test_cached_reference_logps_equal_a_fresh_computation(tiny_model_dir, pref_files, tmp_path):
    pref_file, ygen_file, _ = pref_files
    cached = cache_reference_logps(tiny_model_dir, pref_file, ygen_file, tmp_path / "ref.parquet", batch_size=5)
    assert pd.read_parquet(tmp_path / "ref.parquet").equals(cached)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pref, ygen = pd.read_parquet(pref_file), pd.read_parquet(ygen_file)
    for i in range(len(pref)):  # one row at a time, no batching, no length sorting
        responses = [[list(pref.chosen_ids[i]), list(pref.rejected_ids[i]), list(ygen.gen_ids[i])]]
        with torch.no_grad():
            fresh = response_logps(model, [list(pref.prompt_ids[i])], responses, pad_token_id=0).sums[0]
        np.testing.assert_allclose(cached.loc[i, list(REF_COLUMNS)].to_numpy(dtype=float), fresh.numpy(), atol=1e-5)
    assert cached["prompt_id"].tolist() == pref["prompt_id"].tolist()


def test_subsets_are_nested_and_bounded():
    small, large = subset_indices(100, 10, seed=0), subset_indices(100, 40, seed=0)
    assert len(small) == 10 and len(large) == 40 and set(small) <= set(large)
    assert subset_indices(100, None, seed=0).tolist() == list(range(100))
    with pytest.raises(ValueError, match="n_train=101 but the preference training split has 100 rows"):
        subset_indices(100, 101, seed=0)


def test_training_logs_every_loss_part_per_step_and_seed(tiny_model_dir, pref_files, tmp_path):
    pref_file, ygen_file, _ = pref_files
    cache_reference_logps(tiny_model_dir, pref_file, ygen_file, tmp_path / "ref.parquet", batch_size=4)
    experiment = Experiment(name="unll-test", loss=LossSettings(name="unll", alpha=0.5, f="sqrt"),
                            optim=OptimSettings(lr=1e-3, epochs=2, batch_size=4), seeds=(0, 1), probe_rows=3,
                            probe_every=4, track_gen=True)
    experiment_job(experiment.to_dict(), str(tiny_model_dir), str(pref_file), str(ygen_file), str(tmp_path / "ref.parquet"),
                   out_dir=str(tmp_path / "model"), metrics_file=str(tmp_path / "m.jsonl"),
                   checkpoint_dir=str(tmp_path / "ckpt"), subset_seed=0, trust_remote_code=False)
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["step"]) for r in records] == [(s, k) for s in (0, 1) for k in range(1, 7)]
    for key in ("loss", "dpo", "penalty", "reward_chosen", "reward_rejected", "reward_gen", "margin", "r", "f_r",
                "frac_r_neg", "reward_acc", "logp_chosen", "logp_rejected", "logp_gen", "grad_norm", "lr",
                "grad_weight_dpo", "grad_weight_penalty"):
        assert all(np.isfinite(r[key]) for r in records), key
    # the first step starts at the reference: implicit rewards are zero, the DPO loss is log 2
    first = [r for r in records if r["step"] == 1]
    assert all(r["dpo"] == pytest.approx(np.log(2), abs=1e-5) for r in first)
    assert all(r["margin"] == pytest.approx(0.0, abs=1e-5) for r in first)
    # the fixed probe rows are scored at step 1, every 4th step and the last step
    probed = [r["step"] for r in records if "probe_logp_chosen" in r and r["seed"] == 0]
    assert probed == [1, 4, 6]
    # the seeds differ in batch order, so their runs differ
    assert [r["loss"] for r in records if r["seed"] == 0] != [r["loss"] for r in records if r["seed"] == 1]
    for seed in (0, 1):
        saved = json.loads((tmp_path / "model" / f"seed-{seed}" / "dppo_training.json").read_text())
        assert saved["settings"]["loss"] == "unll" and saved["steps"] == 6 and saved["seed"] == seed
    assert not (tmp_path / "ckpt").exists()
