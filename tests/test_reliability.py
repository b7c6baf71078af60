"""Reliability without a pipeline run: numerical faults in training (real tiny model, injected
NaN), safe loading (safetensors only, no remote code, no unsafe torch.load in src/), atomic
outputs under SIGKILL, complete-checkpoint selection, and the config checks sweeps bypass."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dppo import io, preference, training
from dppo.config import ConfigError, check_config, check_local_paths
from dppo.losses import LossConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dppo"


# --- numerical faults ---------------------------------------------------------------------------


def preference_rows(tokenizer, n: int, nan_rows=()) -> pd.DataFrame:
    """``n`` tiny preference rows with reference log-probs; NaN in ``ref_chosen`` of ``nan_rows``."""
    vocab = tokenizer.get_vocab()
    prompt = [vocab[t] for t in ("<|im_start|>", "user", "sort", ":", "a", "<|im_end|>", "<|im_start|>", "assistant")]
    rows = []
    for i in range(n):
        letter = "abcdefgh"[i % 8]
        rows.append({
            "prompt_ids": prompt, "chosen_ids": [vocab["a"], vocab["<|im_end|>"]],
            "rejected_ids": [vocab[letter], vocab["b"], vocab["<|im_end|>"]], "gen_ids": [vocab["c"], vocab["<|im_end|>"]],
            "ref_chosen": float("nan") if i in nan_rows else -3.0, "ref_rejected": -4.0, "ref_gen": -3.5,
        })
    return pd.DataFrame(rows)


def train(tmp_path, model_dir, rows, on_nonfinite="stop", loss="dpo"):
    opt = training.OptimConfig(lr=1e-2, batch_size=4, save_steps=100, warmup_ratio=0.0, bf16=False)
    preference.train_preference(
        init_dir=model_dir, rows=rows, out_dir=tmp_path / "model", metrics_file=tmp_path / "metrics.jsonl",
        loss_config=LossConfig(name=loss, f="linear", alpha=0.5), opt=opt, checkpoint_dir=tmp_path / "ckpt",
        experiment="nan_probe", on_nonfinite=on_nonfinite,
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_nonfinite_loss_stops_with_step_experiment_and_parts(tmp_path, tiny_model_dir, tokenizer):
    rows = preference_rows(tokenizer, 8, nan_rows={5})  # second batch of 4
    with pytest.raises(preference.NonFiniteLossError) as err:
        train(tmp_path, tiny_model_dir, rows, loss="minll")
    message = str(err.value)
    assert message.startswith("non-finite loss at step 1 of experiment 'nan_probe': loss=nan, dpo=nan")
    assert "penalty=" in message and "reward_chosen=nan" in message and "logp_gen=" in message
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_nonfinite_loss_can_skip_the_batch(tmp_path, tiny_model_dir, tokenizer):
    rows = preference_rows(tokenizer, 8, nan_rows={0, 1, 2, 3, 4, 5, 6, 7})  # every batch NaN
    train(tmp_path, tiny_model_dir, rows, on_nonfinite="skip")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    assert all(m["loss"] == 0.0 and m["grad_norm"] == 0.0 for m in logged)  # the skipped batches moved nothing
    before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nonfinite_gradient_stops_before_the_optimizer_step(tmp_path, tiny_model_dir):
    model = io.load_causal_lm(tiny_model_dir)
    param_name, param = next(iter(model.named_parameters()))
    param.grad = torch.zeros_like(param)
    param.grad.view(-1)[0] = float("inf")
    guard = preference.FiniteGradientGuard("nan_probe")
    with pytest.raises(preference.NonFiniteLossError,
                       match=rf"non-finite gradient of {re.escape(param_name)} at step 7 of experiment 'nan_probe'"):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=7), None, model=model)
    param.grad.view(-1)[0] = 0.0
    guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=7), None, model=model)  # finite: passes


def test_a_nan_model_is_never_saved(tmp_path, tiny_model_dir, tokenizer):
    model = io.load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    with pytest.raises(FloatingPointError, match="is not finite; refusing to save"):
        training.save_final_model(SimpleNamespace(model=model), tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary directory


# --- safe loading ---------------------------------------------------------------------------------


def test_no_pickle_or_unsafe_torch_load_in_the_package():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bimport (c?pickle|dill|joblib)\b|\bpickle\.", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if re.search(r"trust_remote_code\s*=\s*True", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_transformers_restores_checkpoints_with_weights_only():
    """Resuming loads optimizer.pt, scheduler.pt and rng_state.pth with torch.load: in this
    transformers every such call passes weights_only=True (and needs torch >= 2.6)."""
    import transformers.trainer

    source = Path(transformers.trainer.__file__).read_text()
    calls = re.findall(r"torch\.load\((.*?)\)\s*\n", source, flags=re.S)
    assert len(calls) >= 5
    assert all("weights_only=True" in call for call in calls)


def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model_dir)
    state = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(io.UnsafeCheckpointError, match=r"holds only pickle weights \(pytorch_model.bin\).*safetensors"):
        io.load_causal_lm(model_dir)
    (model_dir / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model weights \(\*\.safetensors\)"):
        io.load_causal_lm(model_dir)


def test_remote_code_in_a_model_directory_never_runs(tmp_path, tiny_model_dir):
    model_dir = tmp_path / "with_code"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "code_ran"
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        model = io.load_causal_lm(model_dir)
    except ValueError as err:  # refusing is as good as ignoring the code
        assert "trust_remote_code" in str(err)
    else:
        assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


# --- atomic outputs and checkpoints -----------------------------------------------------------


def test_atomic_output_dir_keeps_the_old_output_on_error(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_output_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (out / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_sigkill_inside_atomic_output_dir_leaves_no_output(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from dppo.io import atomic_output_dir
        with atomic_output_dir({str(tmp_path / "model")!r}) as tmp:
            (tmp / "config.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9
    assert not (tmp_path / "model").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.tmp-")  # hidden, never the output


def test_resume_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"")
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")  # Trainer writes it last
    (tmp_path / "checkpoint-x").mkdir()
    assert training.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert training.last_checkpoint(tmp_path / "absent") is None


def test_metrics_log_is_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)))
    training.JsonlMetricsCallback(path, resume_step=4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_fault_injection_is_off_unless_the_environment_names_the_run(monkeypatch):
    monkeypatch.delenv("DPPO_FAULT_RUN", raising=False)
    assert training.FaultInjection.from_env("sft") is None
    monkeypatch.setenv("DPPO_FAULT_RUN", "dpo")
    monkeypatch.setenv("DPPO_FAULT_AT_STEP", "3")
    assert training.FaultInjection.from_env("sft") is None
    hook = training.FaultInjection.from_env("dpo")
    assert hook.step == 3 and hook.signal.name == "SIGKILL"


# --- config checks that sweeps would bypass ---------------------------------------------------


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"n_train": [16, 0]}, r"experiments\.x__n_train=0\.n_train: must be a whole number >= 1"),
        ({"lr": [-0.1]}, r"experiments\.x__lr=-0\.1\.lr: must be a finite number > 0"),
        ({"seed": [0.5]}, r"experiments\.x__seed=0\.5\.seed: must be a whole number"),
        ({"alpha": [-1]}, r"experiments\.x__alpha=-1: LossConfig\.alpha must be a finite number >= 0"),
        ({"beta": [0]}, r"experiments\.x__beta=0: LossConfig\.beta must be a finite number > 0"),
        ({"zeta": [2]}, r"experiments\.x__zeta=2: LossConfig\.zeta must be in \[0, 1\]"),
        ({"f": ["cubic"]}, r"experiments\.x__f=cubic: LossConfig\.f='cubic' is not one of"),
    ],
)
def test_swept_values_are_checked_like_plain_ones(sweep, message):
    with pytest.raises(ConfigError, match=message):
        check_config({"experiments": {"x": {"loss": "minll", "sweep": sweep}}})


def test_n_train_larger_than_the_data_names_experiment_and_key(tmp_path):
    frame = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt_ids": [[1]] * 3, "chosen_ids": [[2]] * 3,
                          "rejected_ids": [[3]] * 3})
    frame.to_parquet(tmp_path / "train.parquet")
    frame[["prompt_id"]].assign(gen_ids=[[4]] * 3).to_parquet(tmp_path / "ygen.parquet")
    frame[["prompt_id"]].assign(ref_chosen=0.0, ref_rejected=0.0, ref_gen=0.0).to_parquet(tmp_path / "ref.parquet")
    spec = {"name": "dpo_small", "loss": "dpo", "n_train": 5}
    with pytest.raises(ValueError, match=r"experiments\.dpo_small\.n_train: n_train=5 but the preference training split has 3 rows"):
        preference.experiment_job(spec, "unused", *(str(tmp_path / f) for f in ("train.parquet", "ygen.parquet", "ref.parquet")),
                                  out_dir=str(tmp_path / "m"), metrics_file=str(tmp_path / "m.jsonl"),
                                  checkpoint_dir=str(tmp_path / "c"))


def test_missing_local_paths_stop_before_any_job(tmp_path):
    (tmp_path / "sft_data").mkdir()
    config = {"model": {"init": "tiny"}, "data": {"sft": {"path": "./sft_data"}, "pref": {"path": "HuggingFaceH4/ultrafeedback_binarized"}}}
    check_local_paths(config, tmp_path)  # existing directory, hub id: fine
    config["data"]["pref"]["path"] = "../nowhere/uf"
    with pytest.raises(ConfigError, match=r"config key data\.pref\.path: local path '\.\./nowhere/uf' does not exist"):
        check_local_paths(config, tmp_path)
    config["data"]["pref"]["path"] = "synthetic"
    config["model"]["init"] = str(tmp_path / "no_model")
    with pytest.raises(ConfigError, match=r"config key model\.init: local path .*no_model' does not exist"):
        check_local_paths(config, tmp_path)


class StopAtStep(training.TrainerCallback):
    """Ends training with an error at a step, as a crash would (checkpoints stay)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"stopped at step {self.step}")


def fit_tiny_sft(tmp_path, model_dir, tokenizer, lr=1e-3, callbacks=()) -> dict:
    """Four SFT steps (8 rows, batch 2) checkpointed every step; returns dppo_training.json."""
    from transformers import Trainer

    from dppo.sft import SFTCollator, sft_example

    vocab = tokenizer.get_vocab()
    rows = [sft_example([vocab["sort"], vocab[c]], [vocab[c], vocab["<|im_end|>"]]) for c in "abcdefgh"]
    opt = training.OptimConfig(lr=lr, batch_size=2, save_steps=1, warmup_ratio=0.0, bf16=False)
    training.fit_and_save(
        Trainer, model=io.load_causal_lm(model_dir), tokenizer=tokenizer, rows=rows,
        collator=SFTCollator(tokenizer.pad_token_id), opt=opt, checkpoint_dir=tmp_path / "ckpt",
        out_dir=tmp_path / "model", metrics_file=tmp_path / "metrics.jsonl", extra={"stage": "probe"},
        callbacks=list(callbacks),
    )
    return json.loads((tmp_path / "model" / "dppo_training.json").read_text())


def test_checkpoints_of_other_settings_are_never_resumed(tmp_path, tiny_model_dir, tokenizer):
    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3, [StopAtStep(3)])
    [first_run] = (tmp_path / "ckpt").glob("run-*")
    assert training.last_checkpoint(first_run).endswith("checkpoint-2")  # step 3 ended before its save
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 2e-3)  # lr changed: a fresh start, not the old optimizer
    assert info["resumed_from"] is None and info["steps"] == 4
    assert not (tmp_path / "ckpt").exists()  # every run's checkpoints dropped once a model is saved

    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3, [StopAtStep(3)])
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3)
    assert info["resumed_from"] == str(first_run / "checkpoint-2")  # same settings: resumed


def test_sigterm_saves_the_current_step_and_stops_without_a_model(tmp_path, tiny_model_dir, tokenizer):
    import signal

    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(training.TrainingTerminated, match="terminated \\(SIGTERM\\) at step 2; checkpoint saved"):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, callbacks=[training.FaultInjection(2, "SIGTERM")])
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the job's own handler is put back
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.jsonl").exists()
    [run_dir] = (tmp_path / "ckpt").glob("run-*")
    assert training.last_checkpoint(run_dir) == str(run_dir / "checkpoint-2")  # no finished step lost
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert info["resumed_from"] == str(run_dir / "checkpoint-2") and info["steps"] == 4
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
