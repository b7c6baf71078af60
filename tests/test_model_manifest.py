"""Finished models carry a manifest (size and SHA-256 of every file), written when their job
publishes them and checked on every load: a model damaged afterwards is refused with an error
naming its directory, the file and the ``snakemake --forcerun`` that rebuilds it. Models the
pipeline did not publish (hub models, the tiny init model, fixtures) have none and load as
before. Real files throughout: a tiny SFT model and a two-seed DPO experiment published by the
pipeline's own job functions, then damaged on disk."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dppo.runtime import io
from dppo.settings import Experiment, LossSettings, OptimSettings
from dppo.train.preference import experiment_job
from dppo.train.reference import cache_reference_logps
from dppo.train.sft import train_sft

SFT, DPO_SEED = "results/models/sft", "results/models/dpo/seed-1"
REBUILD = {SFT: "snakemake --forcerun results/models/sft", DPO_SEED: "snakemake --forcerun results/models/dpo"}
OPT = dict(lr=1e-2, batch_size=4, save_steps=100, warmup_ratio=0.0, bf16=False)


def _pref_files(tokenizer, data: Path) -> None:
    vocab = tokenizer.get_vocab()
    prompt = [vocab[t] for t in ("<|im_start|>", "user", "sort", ":", "a", "<|im_end|>", "<|im_start|>", "assistant")]
    letters = "abcdefgh"
    pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(8)],
        "prompt_ids": [prompt + [vocab[c]] for c in letters],
        "chosen_ids": [[vocab["a"], vocab["<|im_end|>"]]] * 8,
        "rejected_ids": [[vocab[c], vocab["b"], vocab["<|im_end|>"]] for c in letters],
    }).to_parquet(data / "pref.parquet")
    pd.DataFrame({"prompt_id": [f"p{i}" for i in range(8)], "gen_ids": [[vocab["c"], vocab["<|im_end|>"]]] * 8,
                  "gen": ["c"] * 8}).to_parquet(data / "ygen.parquet")
    pd.DataFrame({"prompt_ids": [prompt] * 8, "response_ids": [[vocab[c], vocab["<|im_end|>"]] for c in letters]}
                 ).to_parquet(data / "sft.parquet")


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir) -> Path:
    """A work directory where the pipeline's jobs published ``results/models/sft`` (SFT job),
    the reference log-probs from it (a job loading its own model) and ``results/models/dpo``
    (seeds 0 and 1), with the rules' relative output paths."""
    work = tmp_path_factory.mktemp("published")
    (work / "data").mkdir()
    _pref_files(io.load_tokenizer(tiny_model_dir), work / "data")
    with contextlib.chdir(work):
        train_sft(tiny_model_dir, "data/sft.parquet", SFT, "results/metrics/sft.jsonl", "results/checkpoints/sft",
                  OptimSettings(**OPT))
        cache_reference_logps(SFT, "data/pref.parquet", "data/ygen.parquet", "results/ref.parquet", batch_size=4)
        experiment = Experiment(name="dpo", loss=LossSettings(name="dpo"), optim=OptimSettings(**OPT), seeds=(0, 1),
                                probe_rows=0)
        experiment_job(experiment.to_dict(), SFT, "data/pref.parquet", "data/ygen.parquet", "results/ref.parquet",
                       "results/models/dpo", "results/metrics/dpo.jsonl", "results/checkpoints/dpo", 0, False)
    return work


@pytest.fixture
def work(published, tmp_path, monkeypatch) -> Path:
    """A copy of the published tree, as the working directory (Snakemake runs jobs there)."""
    copy = shutil.copytree(published, tmp_path / "work")
    monkeypatch.chdir(copy)
    return copy


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_published_models_carry_a_manifest_of_every_file(work):
    for model, output in ((SFT, "."), ("results/models/dpo/seed-0", ".."), (DPO_SEED, "..")):
        manifest = json.loads((work / model / io.MODEL_MANIFEST).read_text())
        names = sorted(p.name for p in (work / model).iterdir() if p.name != io.MODEL_MANIFEST)
        assert sorted(manifest["files"]) == names and "model.safetensors" in names and "dppo_training.json" in names
        assert manifest["output"] == output  # the rule's output, relative to the model directory
        for name, meta in manifest["files"].items():
            assert meta["bytes"] == (work / model / name).stat().st_size
        io.load_causal_lm(model)
        io.load_tokenizer(model)


@pytest.mark.parametrize("model", [SFT, DPO_SEED])
def test_a_flipped_byte_is_named_with_directory_file_and_rebuild_command(work, model):
    weights = work / model / "model.safetensors"
    flip_byte(weights, weights.stat().st_size - 3)  # inside a tensor: safetensors itself loads it silently
    for load in (io.load_causal_lm, io.load_tokenizer, io.check_safetensors):
        with pytest.raises(io.DamagedModelError) as err:
            load(model)
        message = str(err.value)
        assert message.startswith(f"{model}: model.safetensors does not match its manifest"), message
        assert REBUILD[model] in message


def test_a_pipeline_job_loading_a_damaged_model_of_its_own_fails_naming_it(work):
    flip_byte(work / SFT / "model.safetensors", (work / SFT / "model.safetensors").stat().st_size // 2)
    with pytest.raises(io.DamagedModelError, match=r"results/models/sft: model\.safetensors does not match.*"
                                                   r"snakemake --forcerun results/models/sft"):
        cache_reference_logps(SFT, "data/pref.parquet", "data/ygen.parquet", "results/ref2.parquet", batch_size=4)
    assert not (work / "results/ref2.parquet").exists()


def test_damage_after_a_first_load_in_the_same_process_is_still_caught(work):
    io.load_causal_lm(SFT)  # verified once (the check is remembered while the files are unchanged)
    flip_byte(work / SFT / "tokenizer.json", 10)
    with pytest.raises(io.DamagedModelError, match=r"sft: tokenizer\.json does not match its manifest"):
        io.load_tokenizer(SFT)


def test_a_truncated_file_is_caught_by_its_size(work):
    weights = work / DPO_SEED / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    with pytest.raises(io.DamagedModelError, match=rf"model\.safetensors has {size // 2} bytes, its manifest says {size}"):
        io.load_causal_lm(DPO_SEED)


def test_a_model_without_manifest_still_loads(tmp_path, tiny_model_dir):
    """Hub models, the tiny_model stage's init model, fixtures: never published by this pipeline."""
    external = shutil.copytree(tiny_model_dir, tmp_path / "init")
    assert not (external / io.MODEL_MANIFEST).exists()
    io.load_causal_lm(external)
    io.load_tokenizer(external)


def test_a_trained_model_whose_manifest_is_gone_is_refused(work):
    """``dppo_training.json`` marks a model this pipeline trained: it must carry its manifest."""
    (work / DPO_SEED / io.MODEL_MANIFEST).unlink()
    with pytest.raises(io.DamagedModelError, match=rf"{DPO_SEED}: no {io.MODEL_MANIFEST}.*{REBUILD[DPO_SEED]}"):
        io.load_causal_lm(DPO_SEED)


def test_broken_safetensors_beside_a_pickle_is_refused_by_name(tmp_path, tiny_model_dir):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "mixed")
    torch.save(load_file(model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # a header length past the file's end
    with pytest.raises(io.DamagedModelError) as err:
        io.load_causal_lm(model_dir)
    message = str(err.value)
    assert message.startswith(f"{model_dir}: model.safetensors") and "pytorch_model.bin" in message, message


def test_manifest_hashing_reads_each_file_once(work, monkeypatch):
    """One read per load: the weights are hashed once however many loaders a job calls."""
    opened = []
    real_sha256 = io.file_sha256
    monkeypatch.setattr(io, "file_sha256", lambda path: opened.append(Path(path).name) or real_sha256(path))
    io.load_tokenizer(DPO_SEED)
    io.load_causal_lm(DPO_SEED)
    assert opened.count("model.safetensors") == 1
