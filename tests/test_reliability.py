"""Reliability without a pipeline run: numerical faults in training (real tiny model, injected
NaN), safe loading (safetensors only, no remote code, no unsafe torch.load in src/), atomic
outputs under SIGKILL and their file modes, checkpoints that validate (torn, truncated or half
written ones are discarded by name), torn metrics lines, and the config checks sweeps bypass."""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dppo.config import ConfigError, check_local_paths, expand_experiments, load_settings
from dppo.runtime import io
from dppo.settings import Experiment, LossSettings, OptimSettings
from dppo.train import checkpoints, faults, loop, preference, publish
from dppo.train.errors import NonFiniteError, TrainingTerminated
from dppo.train.metrics_log import MetricsLog
from dppo.train.sft import SFTTask

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
    experiment = Experiment(name="nan_probe", loss=LossSettings(name=loss, f="linear", alpha=0.5),
                            optim=OptimSettings(lr=1e-2, batch_size=4, save_steps=100, warmup_ratio=0.0, bf16=False),
                            on_nonfinite=on_nonfinite, probe_rows=0)
    return preference.train_seed(experiment, 0, Path(model_dir), rows, None, tmp_path / "ckpt", False, max_steps=-1)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_nonfinite_loss_stops_with_step_experiment_and_parts(tmp_path, tiny_model_dir, tokenizer):
    rows = preference_rows(tokenizer, 8, nan_rows={0, 1, 2, 3, 4, 5, 6, 7})
    with pytest.raises(NonFiniteError) as err:
        train(tmp_path, tiny_model_dir, rows, loss="minll")
    message = str(err.value)
    assert message.startswith("non-finite loss at step 1 of 'nan_probe': loss=nan, dpo=nan")
    assert "penalty=" in message and "reward_chosen=nan" in message and "grad_weight_penalty=" in message
    assert not list((tmp_path / "ckpt").glob("run-*/final"))  # no model


def test_nonfinite_loss_can_skip_the_batch(tmp_path, tiny_model_dir, tokenizer):
    rows = preference_rows(tokenizer, 8, nan_rows={0, 1, 2, 3, 4, 5, 6, 7})  # every batch NaN
    run_dir = train(tmp_path, tiny_model_dir, rows, on_nonfinite="skip")
    assert (run_dir / "metrics.jsonl").read_text() == ""  # no step was taken
    record = json.loads((run_dir / "final" / "dppo_training.json").read_text())
    assert record["skipped_steps"] == 2 and record["steps"] == 2
    before, after = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(run_dir / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped batches moved nothing


def test_nonfinite_gradient_stops_before_the_optimizer_step(tiny_model_dir):
    model = io.load_causal_lm(tiny_model_dir)
    param_name, param = next(iter(model.named_parameters()))
    param.grad = torch.zeros_like(param)
    param.grad.view(-1)[0] = float("inf")
    params = list(model.parameters())
    with pytest.raises(NonFiniteError, match=rf"non-finite gradient of {re.escape(param_name)} at step 7 of 'x'"):
        loop.check_finite_gradients(model, torch.nn.utils.get_total_norm([param.grad]), 7, "x")
    param.grad.view(-1)[0] = 0.0
    loop.check_finite_gradients(model, torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]),
                                7, "x")  # finite: passes


def test_a_nan_model_is_never_saved(tmp_path, tiny_model_dir, tokenizer):
    model = io.load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    with pytest.raises(FloatingPointError, match="is not finite; refusing to save"):
        publish.save_model(model, tokenizer, tmp_path / "out", {})
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
        from dppo.runtime.io import atomic_output_dir
        with atomic_output_dir({str(tmp_path / "model")!r}) as tmp:
            (tmp / "config.json").write_text("{{}}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9
    assert not (tmp_path / "model").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.tmp-")  # hidden, never the output


def test_atomic_outputs_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "table.csv", "a\n")
        with io.atomic_output_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_bytes(b"x")
            os.chmod(tmp / "weights", 0o600)  # as safetensors writes its files
    finally:
        os.umask(old)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "weights").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_named_and_leaves_no_output(tmp_path):
    """torch.save on a full disk says only "unexpected pos ..." or "iostream error": the atomic
    writers add a note naming the full disk. A real 1 MiB tmpfs (needs root; CI runs as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises((RuntimeError, OSError)) as err:
            with io.atomic_output_dir(mount / "checkpoint-1") as tmp:
                with io.atomic_output_file(tmp / "optimizer.pt") as part:  # nested, as a checkpoint's files
                    torch.save({"weights": torch.zeros(1 << 20)}, part)  # 4 MiB
        notes, message = getattr(err.value, "__notes__", []), str(err.value)
        del err  # its traceback holds torch's open file, which keeps the mount busy
        gc.collect()
        assert [io.DISK_FULL_NOTE in note for note in notes] == [True], (notes, message)  # once, not per writer
        assert not (mount / "checkpoint-1").exists() and list(mount.iterdir()) == []
    finally:
        unmounted = subprocess.run(["umount", str(mount)], capture_output=True, text=True)
    assert unmounted.returncode == 0, unmounted.stderr


def test_partial_outputs_of_a_killed_writer_are_cleaned_by_name(tmp_path):
    (tmp_path / ".model.tmp-abc").mkdir()
    (tmp_path / ".other.tmp-xyz").mkdir()  # another job's write in progress: left alone
    (tmp_path / "model.tmp-not-hidden").mkdir()
    removed = io.cleanup_partial_outputs(tmp_path, "model")
    assert [p.name for p in removed] == [".model.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-xyz", "model.tmp-not-hidden"]
    # the next write of an output removes what a killed write of it left
    (tmp_path / ".model.tmp-def").mkdir()
    (tmp_path / ".table.csv.tmp-1.csv").write_text("half")
    with io.atomic_output_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("x")
    io.write_text(tmp_path / "table.csv", "a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-xyz", "model", "model.tmp-not-hidden", "table.csv"]


# --- checkpoints: only complete ones count ------------------------------------------------------


def sft_rows(tokenizer) -> list[dict]:
    vocab = tokenizer.get_vocab()
    return [{"prompt_ids": [vocab["sort"], vocab[c]], "response_ids": [vocab[c], vocab["<|im_end|>"]]} for c in "abcdefgh"]


class StopAtCall:
    """A task whose loss raises at its n-th call, as a crash would (checkpoints stay)."""

    def __init__(self, task, call):
        self.task, self.call, self.calls = task, call, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, rows):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt(f"stopped at call {self.call}")
        return self.task.loss(model, rows)


def fit_tiny_sft(tmp_path, model_dir, tokenizer, lr=1e-3, stop_at_call=None) -> dict:
    """Four SFT steps (8 rows, batch 2) checkpointed every step; returns the finished run's record."""
    rows = sft_rows(tokenizer)
    task = SFTTask(rows, tokenizer.pad_token_id)
    if stop_at_call:
        task = StopAtCall(task, stop_at_call)
    opt = OptimSettings(lr=lr, batch_size=2, save_steps=1, warmup_ratio=0.0, bf16=False)
    run_dir = loop.train(io.load_causal_lm(model_dir), tokenizer, rows, task, opt, tmp_path / "ckpt", {"stage": "probe"})
    return json.loads((run_dir / "final" / "dppo_training.json").read_text())


def test_checkpoints_of_other_settings_are_discarded_never_resumed(tmp_path, tiny_model_dir, tokenizer, caplog):
    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3, stop_at_call=3)
    [first_run] = (tmp_path / "ckpt").glob("run-*")
    assert checkpoints.last_checkpoint(first_run).name == "checkpoint-2"  # step 3 ended before its save
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 2e-3)  # lr changed: a fresh start, not the old optimizer
    assert info["resumed_from"] is None and info["steps"] == 4
    assert f"discarding {first_run}" in caplog.text and not first_run.exists()

    shutil.rmtree(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3, stop_at_call=3)
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, 1e-3)
    assert info["resumed_from"] == str(first_run / "checkpoint-2")  # same settings: resumed


def _uninterrupted(tmp_path, tiny_model_dir, tokenizer):
    fit_tiny_sft(tmp_path / "ref", tiny_model_dir, tokenizer)
    [run] = (tmp_path / "ref" / "ckpt").glob("run-*")
    return (run / "final" / "model.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()


@pytest.mark.parametrize("damage", ["no manifest", "torn manifest", "truncated weights", "torn optimizer", "missing rng"])
def test_a_damaged_checkpoint_is_discarded_by_name_and_the_rerun_starts_clean(
        tmp_path, tiny_model_dir, tokenizer, caplog, damage):
    weights, metrics = _uninterrupted(tmp_path, tiny_model_dir, tokenizer)
    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, stop_at_call=4)  # checkpoint-3 is the one kept
    [run] = (tmp_path / "ckpt").glob("run-*")
    checkpoint = run / "checkpoint-3"
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-3"]
    if damage == "no manifest":  # a kill before the manifest: in practice the directory is never renamed
        (checkpoint / "manifest.json").unlink()
    elif damage == "torn manifest":
        (checkpoint / "manifest.json").write_text('{"step": 3, "fi')
    elif damage == "truncated weights":
        data = (checkpoint / "model.safetensors").read_bytes()
        (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "torn optimizer":
        (checkpoint / "optimizer.pt").write_bytes(b"")
    else:
        (checkpoint / "rng.pt").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert f"discarding checkpoint {checkpoint}" in caplog.text
    assert info["resumed_from"] is None  # started that job clean...
    assert (run / "final" / "model.safetensors").read_bytes() == weights  # ...and ended where it would have
    assert (run / "metrics.jsonl").read_text() == metrics


# --- finished models: published with a manifest, checked on every load ---------------------------


def publish_tiny_sft(tmp_path, model_dir, tokenizer) -> str:
    """``results/models/sft`` published by the SFT job (relative paths, as Snakemake passes them;
    ``tmp_path`` is the working directory)."""
    from dppo.train.sft import train_sft

    pd.DataFrame(sft_rows(tokenizer)).to_parquet(tmp_path / "sft.parquet")
    opt = OptimSettings(lr=1e-3, batch_size=2, save_steps=100, warmup_ratio=0.0, bf16=False)
    train_sft(model_dir, "sft.parquet", "results/models/sft", "results/metrics/sft.jsonl", "results/checkpoints/sft", opt)
    return "results/models/sft"


FINISHED_MODEL_DAMAGE = {  # what happens to a model after its job published it -> the file the error names
    "flipped byte in the weights": ("model.safetensors", r"model\.safetensors does not match its manifest"),
    "truncated weights": ("model.safetensors", r"model\.safetensors has \d+ bytes, its manifest says \d+"),
    "weights 0 bytes": ("model.safetensors", r"model\.safetensors has 0 bytes"),
    "flipped byte in the tokenizer": ("tokenizer.json", r"tokenizer\.json does not match its manifest"),
    "missing config": ("config.json", r"config\.json is missing"),
    "added file": ("added_tokens.json", r"added_tokens\.json is not in its manifest"),
    "torn manifest": (io.MODEL_MANIFEST, rf"no valid {io.MODEL_MANIFEST}"),
    "missing manifest": (io.MODEL_MANIFEST, rf"no {io.MODEL_MANIFEST}, but its dppo_training\.json"),
}


@pytest.mark.parametrize("damage", list(FINISHED_MODEL_DAMAGE))
def test_a_damaged_finished_model_is_refused_naming_directory_file_and_rebuild(
        tmp_path, tiny_model_dir, tokenizer, monkeypatch, damage):
    """Before, a plain rerun said "Nothing to be done" and the job reading the model failed
    with a SafetensorError naming no file (or, for a flipped byte, ran on the damaged weights)."""
    monkeypatch.chdir(tmp_path)
    model = publish_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    io.load_causal_lm(model)  # intact: loads
    name, message = FINISHED_MODEL_DAMAGE[damage]
    path = tmp_path / model / name
    if damage.startswith("flipped byte"):
        data = bytearray(path.read_bytes())
        data[len(data) - 5] ^= 0x10
        path.write_bytes(bytes(data))
    elif damage == "truncated weights":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "weights 0 bytes":
        path.write_bytes(b"")
    elif damage == "added file":
        path.write_text("{\"<evil>\": 7}")
    elif damage == "torn manifest":
        path.write_text(path.read_text()[:40])
    else:
        path.unlink()
    for load in (io.load_causal_lm, io.load_tokenizer):
        with pytest.raises(io.DamagedModelError, match=rf"^{model}: {message}.*snakemake --forcerun results/models/sft"):
            load(model)


def test_a_damaged_finished_run_is_trained_again_bit_identical(tmp_path, tiny_model_dir, tokenizer, caplog):
    """A killed job's finished run (``final/``, not yet published) damaged before the rerun: the
    rerun discards it by name and trains again, rather than publishing damaged weights."""
    weights, _ = _uninterrupted(tmp_path, tiny_model_dir, tokenizer)
    fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    [run] = (tmp_path / "ckpt").glob("run-*")
    final = run / "final" / "model.safetensors"
    data = bytearray(final.read_bytes())
    data[-7] ^= 0x01
    final.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert f"discarding the finished model {run / 'final'}: model.safetensors does not match" in caplog.text
    assert final.read_bytes() == weights


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_model_dir, tokenizer):
    weights, metrics = _uninterrupted(tmp_path, tiny_model_dir, tokenizer)
    with pytest.raises(KeyboardInterrupt):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer, stop_at_call=3)
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    [run] = (tmp_path / "ckpt").glob("run-*")
    assert info["resumed_from"] == str(run / "checkpoint-2")
    assert (run / "final" / "model.safetensors").read_bytes() == weights
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_finished_run_is_not_trained_again(tmp_path, tiny_model_dir, tokenizer, caplog):
    first = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    with caplog.at_level("INFO"):
        again = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert again == first and "already finished" in caplog.text


def test_metrics_log_is_cut_back_to_the_resumed_step_and_a_torn_line_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    with caplog.at_level("WARNING"):
        MetricsLog(path, resume_step=4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert "dropping a torn line 8" in caplog.text
    path.write_text('{"step": 1}\n{"st')
    MetricsLog(path, resume_step=9)
    assert path.read_text() == '{"step": 1}\n'


def test_undecodable_or_non_record_metrics_lines_are_dropped(tmp_path, caplog):
    """Found by benchmarks/reliability.py: bytes that are not UTF-8 made every rerun fail."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\x00\xff\xfe\n[1, 2]\n{"step": 2}\n')
    with caplog.at_level("WARNING"):
        MetricsLog(path, resume_step=2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert "dropping a torn line 2" in caplog.text and "dropping a torn line 3" in caplog.text


def test_fault_injection_is_off_unless_the_environment_names_the_run(monkeypatch):
    monkeypatch.delenv("DPPO_FAULT_RUN", raising=False)
    faults.injected_fault("sft")(3)  # a no-op
    monkeypatch.setenv("DPPO_FAULT_RUN", "dpo")
    monkeypatch.setenv("DPPO_FAULT_AT_STEP", "3")
    monkeypatch.setenv("DPPO_FAULT_SIGNAL", "SIGUSR1")
    import signal

    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: seen.append(a[0]))
    try:
        faults.injected_fault("sft")(3)
        faults.injected_fault("dpo")(2)
        assert seen == []
        faults.injected_fault("dpo")(3)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --- config checks that sweeps would bypass ---------------------------------------------------


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"n_train": [16, 0]}, r"config key experiments\.x__n_train=0\.n_train: must be >= 1"),
        ({"lr": [-0.1]}, r"config key experiments\.x__lr=-0\.1\.lr: must be > 0"),
        ({"alpha": [-1]}, r"config key experiments\.x__alpha=-1\.alpha: must be >= 0"),
        ({"beta": [0]}, r"config key experiments\.x__beta=0\.beta: must be > 0"),
        ({"zeta": [2]}, r"config key experiments\.x__zeta=2\.zeta: must be <= 1"),
        ({"f": ["cubic"]}, r"config key experiments\.x__f=cubic\.f: 'cubic' is not one of"),
        ({"lr": [float("nan")]}, r"config key experiments\.x__lr=nan\.lr: must be a finite number"),
    ],
)
def test_swept_values_are_checked_like_plain_ones(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand_experiments({"experiments": {"x": {"loss": "minll", "sweep": sweep}}})


def test_n_train_larger_than_the_data_names_experiment_and_key(tmp_path):
    frame = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt_ids": [[1]] * 3, "chosen_ids": [[2]] * 3,
                          "rejected_ids": [[3]] * 3})
    frame.to_parquet(tmp_path / "train.parquet")
    frame[["prompt_id"]].assign(gen_ids=[[4]] * 3, gen="x").to_parquet(tmp_path / "ygen.parquet")
    frame[["prompt_id"]].assign(ref_chosen=0.0, ref_rejected=0.0, ref_gen=0.0).to_parquet(tmp_path / "ref.parquet")
    experiment = Experiment(name="dpo_small", n_train=5).to_dict()
    with pytest.raises(ValueError, match=r"experiments\.dpo_small\.n_train: n_train=5 but the preference training split has 3 rows"):
        preference.experiment_job(experiment, "unused", *(str(tmp_path / f) for f in ("train.parquet", "ygen.parquet", "ref.parquet")),
                                  out_dir=str(tmp_path / "m"), metrics_file=str(tmp_path / "m.jsonl"),
                                  checkpoint_dir=str(tmp_path / "c"), subset_seed=0, trust_remote_code=False)


def _settings(**sections):
    config = {"model": {"init": "tiny"}, "data": {"sft": {"path": "synthetic"}, "pref": {"path": "synthetic"}},
              "experiments": {"dpo": {"loss": "dpo"}}, "reward": {"backend": "programmatic"}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return load_settings(config)


def test_missing_local_paths_stop_before_any_job(tmp_path):
    (tmp_path / "sft_data").mkdir()
    check_local_paths(_settings(data={"sft": {"path": "./sft_data"}, "pref": {"path": "HuggingFaceH4/ultrafeedback_binarized"}}),
                      tmp_path)  # existing directory, hub id: fine
    with pytest.raises(ConfigError, match=r"config key data\.pref\.path: local path '\.\./nowhere/uf' does not exist"):
        check_local_paths(_settings(data={"sft": {"path": "synthetic"}, "pref": {"path": "../nowhere/uf"}}), tmp_path)
    with pytest.raises(ConfigError, match=r"config key model\.init: local path .*no_model' does not exist"):
        check_local_paths(_settings(model={"init": str(tmp_path / "no_model")}), tmp_path)
    with pytest.raises(ConfigError, match=r"config key reward\.model: local path '\./rm' does not exist"):
        check_local_paths(_settings(reward={"backend": "seqcls", "model": "./rm"}), tmp_path)


def test_a_misspelt_rule_under_resources_is_refused(tmp_path):
    from dppo.config import check_resource_rules

    settings = _settings(resources={"default": {"gpu": 0}, "train_preferenc": {"gpu": 1}})
    with pytest.raises(ConfigError, match=r"config key resources\.train_preferenc: no rule of that name"):
        check_resource_rules(settings, ["sft", "train_preference"])
    check_resource_rules(_settings(resources={"train_preference": {"gpu": 1}}), ["sft", "train_preference"])


def test_sigterm_saves_the_current_step_and_stops_without_a_model(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    import signal

    monkeypatch.setenv("DPPO_FAULT_RUN", "probe")
    monkeypatch.setenv("DPPO_FAULT_AT_STEP", "2")
    monkeypatch.setenv("DPPO_FAULT_SIGNAL", "SIGTERM")
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingTerminated, match="terminated \\(SIGTERM\\) at step 2; checkpoint saved"):
        fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the job's own handler is put back
    [run_dir] = (tmp_path / "ckpt").glob("run-*")
    assert not (run_dir / "final").exists()
    assert checkpoints.last_checkpoint(run_dir) == run_dir / "checkpoint-2"  # no finished step lost
    monkeypatch.delenv("DPPO_FAULT_RUN")
    info = fit_tiny_sft(tmp_path, tiny_model_dir, tokenizer)
    assert info["resumed_from"] == str(run_dir / "checkpoint-2") and info["steps"] == 4
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_a_run_no_longer_than_its_warm_up_warns_that_nothing_will_change(tmp_path, tiny_model_dir, tokenizer, caplog):
    rows = preference_rows(tokenizer, 4)  # one batch: one update, and it is a warm-up step
    experiment = Experiment(name="one_step", loss=LossSettings(name="dpo"),
                            optim=OptimSettings(lr=1e-2, batch_size=4, warmup_ratio=0.1, bf16=False), probe_rows=0)
    with caplog.at_level("WARNING", logger="dppo.train.loop"):
        preference.train_seed(experiment, 0, Path(tiny_model_dir), rows, None, tmp_path / "ckpt", False, max_steps=-1)
    assert "one_step: every one of its 1 update(s) has learning rate 0" in caplog.text
