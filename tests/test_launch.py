"""Multi-process training: the same job under torchrun (2 processes, gloo on CPU) keeps the
configured effective batch size, saves once, and logs every optimizer step once; a non-finite
loss or a SIGTERM seen by one process only makes every process skip, stop or checkpoint alike
(each process would otherwise wait for the others in a collective that never comes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from numerics import gamma
from safetensors.torch import load_file

from dppo.runtime.launch import run_job
from dppo.train.sft import sft_job

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_sft_job_under_torchrun_keeps_the_effective_batch_and_equals_one_process(tmp_path, tiny_model_dir):
    train = tmp_path / "train.parquet"
    pd.DataFrame({"prompt_ids": [[2, 24, 20, 23, 4 + i % 5, 3, 2, 25] for i in range(16)],
                  "response_ids": [[4 + i % 5, 3] for i in range(16)]}).to_parquet(train)

    def job(name, n_gpus):
        kwargs = dict(opt={"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0}, model_dir=str(tiny_model_dir),
                      train_file=str(train), out_dir=str(tmp_path / name), metrics_file=str(tmp_path / f"{name}.jsonl"),
                      checkpoint_dir=str(tmp_path / f"ckpt-{name}"), trust_remote_code=False)
        run_job(sft_job, kwargs, n_gpus=n_gpus)
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

    two, one = job("two", 2), job("one", 1)
    assert [m["step"] for m in two] == [1, 2, 3, 4]  # 16 rows / effective batch 4, whatever the process count
    record = json.loads((tmp_path / "two" / "dppo_training.json").read_text())
    assert record["steps"] == 4
    # two processes of two rows each add up to the one-process batch of four (float rounding aside)
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-5)
    a, b = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    # Same weights up to float rounding, normwise (Adam divides each gradient element by its own
    # scale, so a near-zero element's rounding can move its update by a lot): the two runs sum the
    # batch's gradient in other orders, so each step's update differs relatively by at most about
    # gamma_n of its longest sum (the intermediate width, or the tokens of one batch), twice over
    # (m and sqrt(v)); first order, over the steps.
    config = json.loads((tiny_model_dir / "config.json").read_text())
    longest_sum = max(config["intermediate_size"], 4 * 10)
    init = load_file(tiny_model_dir / "model.safetensors")
    change = torch.cat([(b[k] - init[k]).flatten() for k in b]).double()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b]).double()
    assert a.keys() == b.keys() and change.norm() > 0
    assert diff.norm() <= 2 * len(two) * gamma(longest_sum) * change.norm()


# --- faults seen by one process only ----------------------------------------------------------

RUN = "probe"  # the run name the fault variables of dppo.train.faults.injected_fault name
OPT = {"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0, "save_steps": 100, "bf16": False}


def loop_job(model_dir: str, train_file: str, checkpoint_dir: str, on_nonfinite: str) -> None:
    """SFT rows through dppo.train.loop.train with a chosen ``on_nonfinite`` (the SFT stage always
    stops); run_job runs it here or, by name (``test_launch:loop_job``), under torchrun."""
    from dppo.runtime.io import load_causal_lm, load_tokenizer, pad_token_id
    from dppo.settings import OptimSettings
    from dppo.train.loop import train
    from dppo.train.sft import SFTTask, sft_rows

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir, False)
    rows = sft_rows(pd.read_parquet(train_file))
    train(load_causal_lm(model_dir, False, dtype=torch.float32), tokenizer, rows, SFTTask(rows, pad_token_id(tokenizer)),
          OptimSettings.from_dict(OPT, "sft"), checkpoint_dir, {"stage": RUN, "rows": len(rows)}, on_nonfinite)


def two_processes(tmp_path, tiny_model_dir, name: str, on_nonfinite: str = "stop", fault: dict | None = None,
                  timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path]:
    """:func:`loop_job` under torchrun with 2 processes (16 rows: 4 steps of 2 rows per process),
    in its own process group, killed whole if it outlives ``timeout`` (a hang); its output and
    checkpoint directory."""
    train = tmp_path / "train.parquet"
    if not train.exists():
        pd.DataFrame({"prompt_ids": [[2, 24, 20, 23, 4 + i % 5, 3, 2, 25] for i in range(16)],
                      "response_ids": [[4 + i % 5, 3] for i in range(16)]}).to_parquet(train)
    kwargs = {"model_dir": str(tiny_model_dir), "train_file": str(train), "checkpoint_dir": str(tmp_path / name),
              "on_nonfinite": on_nonfinite}
    code = ("import json, sys; from dppo.runtime.launch import run_job; from test_launch import loop_job; "
            "run_job(loop_job, json.loads(sys.argv[1]), n_gpus=2)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPPO_FAULT_")}
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])),
                "PYTHONWARNINGS": "ignore", **(fault or {})})
    process = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
        output, _ = process.communicate()
        pytest.fail(f"the two processes hung (killed after {timeout} s):\n{output[-4000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, ""), tmp_path / name


def one_fault(kind: str, rank: int = 1, step: int = 2) -> dict:
    return {"DPPO_FAULT_RUN": RUN, "DPPO_FAULT_AT_STEP": str(step), "DPPO_FAULT_SIGNAL": kind,
            "DPPO_FAULT_RANK": str(rank)}


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_process_makes_every_process_skip_the_step(tmp_path, tiny_model_dir, monkeypatch):
    done, ckpt = two_processes(tmp_path, tiny_model_dir, "two", "skip", one_fault("NONFINITE"))
    assert done.returncode == 0, done.stdout[-4000:]
    said = "non-finite loss at step 2 of 'probe' on process 1"
    for rank in (0, 1):  # each process says it skips, naming the one whose loss it was
        assert any(f"rank{rank} " in line and said in line and "skipping the batch on every process" in line
                   for line in done.stdout.splitlines()), done.stdout[-4000:]
    [run_dir] = ckpt.glob("run-*")
    assert steps_logged(run_dir) == [1, 3, 4]
    record = json.loads((run_dir / "final" / "dppo_training.json").read_text())
    assert record["skipped_steps"] == 1 and record["steps"] == 4
    # One process skipping the same step trains the same model, up to float rounding (the batch's
    # gradient summed in another order; bound: test_sft_job_under_torchrun_..._equals_one_process).
    for key, value in one_fault("NONFINITE").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DPPO_FAULT_RANK")
    loop_job(str(tiny_model_dir), str(tmp_path / "train.parquet"), str(tmp_path / "one"), "skip")
    [one_dir] = (tmp_path / "one").glob("run-*")
    assert steps_logged(one_dir) == [1, 3, 4]
    a, b = load_file(run_dir / "final" / "model.safetensors"), load_file(one_dir / "final" / "model.safetensors")
    init = load_file(tiny_model_dir / "model.safetensors")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    change = torch.cat([(b[k] - init[k]).flatten() for k in b]).double()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b]).double()
    assert change.norm() > 0
    assert diff.norm() <= 2 * 3 * gamma(max(config["intermediate_size"], 4 * 10)) * change.norm()


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_process_stops_every_process(tmp_path, tiny_model_dir):
    done, ckpt = two_processes(tmp_path, tiny_model_dir, "two", "stop", one_fault("NONFINITE"))
    assert done.returncode != 0
    # both processes raise (none is left waiting, none is killed by torchrun for its partner)
    assert done.stdout.count("NonFiniteError: non-finite loss at step 2 of 'probe'") == 2, done.stdout[-4000:]
    assert done.stdout.count("NonFiniteError: non-finite loss at step 2 of 'probe' on process 1") == 2
    [run_dir] = ckpt.glob("run-*")
    assert steps_logged(run_dir) == [1] and not (run_dir / "final").exists()


@pytest.mark.slow
def test_sigterm_to_one_process_checkpoints_and_stops_every_process(tmp_path, tiny_model_dir):
    from dppo.train.checkpoints import last_checkpoint

    done, ckpt = two_processes(tmp_path, tiny_model_dir, "two", fault=one_fault("SIGTERM"))
    assert done.returncode != 0
    assert done.stdout.count("TrainingTerminated: terminated (SIGTERM) at step 2; checkpoint saved") == 2, \
        done.stdout[-4000:]
    [run_dir] = ckpt.glob("run-*")
    assert last_checkpoint(run_dir) == run_dir / "checkpoint-2" and not (run_dir / "final").exists()
    assert steps_logged(run_dir) == [1, 2]
    done, _ = two_processes(tmp_path, tiny_model_dir, "two")  # the job again: it resumes
    assert done.returncode == 0, done.stdout[-4000:]
    record = json.loads((run_dir / "final" / "dppo_training.json").read_text())
    assert record["resumed_from"] == str(run_dir / "checkpoint-2") and steps_logged(run_dir) == [1, 2, 3, 4]
