"""Multi-process training: the same job under torchrun (2 processes, gloo on CPU; DDP, and FSDP2
where named) keeps the configured effective batch size, trains the weights of one process (SFT
and preference training, a short last batch that leaves a process without rows), saves once,
and logs every optimizer step once; a non-finite loss or a SIGTERM seen by one process only makes
every process skip, stop or checkpoint alike (each process would otherwise wait for the others in
a collective that never comes), and a run stopped so resumes bit-identically."""

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


# FSDP2 is the option for a model that does not fit one GPU; its 2-process runs (minutes in all on
# 2 cores) are `long` tests: `make test-all` and CI run them, `make test` the DDP default.
STRATEGIES = ["ddp", pytest.param("fsdp2", marks=pytest.mark.long)]


@pytest.mark.slow
def test_sft_job_under_torchrun_keeps_the_effective_batch_and_equals_one_process(tmp_path, tiny_model_dir):
    train = sft_train_file(tmp_path)

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
    assert_same_training(tmp_path / "two", tmp_path / "one", tiny_model_dir, len(two), 4 * 10)


def assert_same_training(got: Path, want: Path, init_dir: Path, steps: int, batch_tokens: int) -> None:
    """The model directory ``got`` (several processes) holds the weights of ``want`` (one process,
    the same effective batch) up to float rounding, normwise (Adam divides each gradient element
    by its own scale, so a near-zero element's rounding can move its update by a lot): the runs
    sum the batch's gradient in other orders, so each step's update differs relatively by at most
    about gamma_n of its longest sum (the intermediate width, the vocabulary, or the tokens of one
    batch), twice over (m and sqrt(v)); first order, over the ``steps`` updates."""
    a, b = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    config = json.loads((init_dir / "config.json").read_text())
    longest_sum = max(config["intermediate_size"], config["vocab_size"], batch_tokens)
    init = load_file(init_dir / "model.safetensors")
    change = torch.cat([(b[k] - init[k]).flatten() for k in b]).double()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b]).double()
    assert a.keys() == b.keys() and change.norm() > 0
    assert diff.norm() <= 2 * steps * gamma(longest_sum) * change.norm()


# --- faults seen by one process only ----------------------------------------------------------

RUN = "probe"  # the run name the fault variables of dppo.train.faults.injected_fault name
OPT = {"lr": 1e-2, "epochs": 1, "batch_size": 4, "warmup_ratio": 0.0, "save_steps": 100, "bf16": False}


def loop_job(model_dir: str, train_file: str, checkpoint_dir: str, on_nonfinite: str, distributed: str = "ddp") -> None:
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
          OptimSettings.from_dict(OPT, "sft"), checkpoint_dir, {"stage": RUN, "rows": len(rows)}, on_nonfinite,
          distributed)


def torchrun(job: str, kwargs: dict, fault: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``job`` (a function of this module) under torchrun with 2 processes, in its own process
    group, killed whole if it outlives ``timeout`` (a hang)."""
    code = (f"import json, sys; from dppo.runtime.launch import run_job; from test_launch import {job}; "
            f"run_job({job}, json.loads(sys.argv[1]), n_gpus=2)")
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
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def sft_train_file(tmp_path, n: int = 16) -> Path:
    """``n`` SFT rows (16: 4 steps of 2 rows per process)."""
    train = tmp_path / f"train-{n}.parquet"
    if not train.exists():
        pd.DataFrame({"prompt_ids": [[2, 24, 20, 23, 4 + i % 5, 3, 2, 25] for i in range(n)],
                      "response_ids": [[4 + i % 5, 3] for i in range(n)]}).to_parquet(train)
    return train


def two_processes(tmp_path, tiny_model_dir, name: str, on_nonfinite: str = "stop", fault: dict | None = None,
                  distributed: str = "ddp", rows: int = 16) -> tuple[subprocess.CompletedProcess, Path]:
    """:func:`loop_job` under torchrun with 2 processes; its output and checkpoint directory."""
    kwargs = {"model_dir": str(tiny_model_dir), "train_file": str(sft_train_file(tmp_path, rows)),
              "checkpoint_dir": str(tmp_path / name), "on_nonfinite": on_nonfinite, "distributed": distributed}
    return torchrun("loop_job", kwargs, fault), tmp_path / name


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
    loop_job(str(tiny_model_dir), str(sft_train_file(tmp_path)), str(tmp_path / "one"), "skip")
    [one_dir] = (tmp_path / "one").glob("run-*")
    assert steps_logged(one_dir) == [1, 3, 4]
    assert_same_training(run_dir / "final", one_dir / "final", tiny_model_dir, 3, 4 * 10)


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
@pytest.mark.parametrize("distributed", STRATEGIES)
def test_sigterm_to_one_process_checkpoints_and_stops_every_process(tmp_path, tiny_model_dir, distributed):
    from dppo.train.checkpoints import last_checkpoint

    done, ckpt = two_processes(tmp_path, tiny_model_dir, "two", fault=one_fault("SIGTERM"), distributed=distributed)
    assert done.returncode != 0
    assert done.stdout.count("TrainingTerminated: terminated (SIGTERM) at step 2; checkpoint saved") == 2, \
        done.stdout[-4000:]
    [run_dir] = ckpt.glob("run-*")
    assert last_checkpoint(run_dir) == run_dir / "checkpoint-2" and not (run_dir / "final").exists()
    assert steps_logged(run_dir) == [1, 2]
    done, _ = two_processes(tmp_path, tiny_model_dir, "two", distributed=distributed)  # the job again: it resumes
    assert done.returncode == 0, done.stdout[-4000:]
    record = json.loads((run_dir / "final" / "dppo_training.json").read_text())
    assert record["resumed_from"] == str(run_dir / "checkpoint-2") and steps_logged(run_dir) == [1, 2, 3, 4]
    done, ref = two_processes(tmp_path, tiny_model_dir, "uninterrupted", distributed=distributed)
    assert done.returncode == 0, done.stdout[-4000:]
    [ref_dir] = ref.glob("run-*")
    resumed, uninterrupted = load_file(run_dir / "final" / "model.safetensors"), \
        load_file(ref_dir / "final" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # bit-identical
    assert (run_dir / "metrics.jsonl").read_bytes() == (ref_dir / "metrics.jsonl").read_bytes()


# --- FSDP2, and preference training -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("distributed", STRATEGIES)
def test_a_short_last_batch_leaves_one_process_without_rows_and_trains_as_one_process(tmp_path, tiny_model_dir,
                                                                                        distributed):
    """18 rows in batches of 4: the last batch's 2 rows are all process 0's, process 1 joins the
    gradient reduction with nothing to add. FSDP2's reduce-scatter must average, as one process
    does (on gloo it has summed in some torch versions), so the reference is one process."""
    done, ckpt = two_processes(tmp_path, tiny_model_dir, "two", distributed=distributed, rows=18)
    assert done.returncode == 0, done.stdout[-4000:]
    loop_job(str(tiny_model_dir), str(sft_train_file(tmp_path, 18)), str(tmp_path / "one"), "stop")
    [two_dir], [one_dir] = ckpt.glob("run-*"), (tmp_path / "one").glob("run-*")
    assert steps_logged(two_dir) == steps_logged(one_dir) == [1, 2, 3, 4, 5]
    assert_same_training(two_dir / "final", one_dir / "final", tiny_model_dir, 5, 4 * 10)


def keys_job(out_dir: str) -> None:
    """Each process names the loss parts it logged, one of them a part the other lacks (as
    reward_gen is when only one process's micro batch scored y_gen on every row)."""
    import atexit

    from dppo.train.distributed import common_keys, init_distributed, world

    init_distributed()
    rank, _ = world()
    names = ["loss", "margin", *(["reward_gen"] if rank == 0 else [])]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(common_keys(names)))
    # torchrun's worker must have closed the process group by the time the interpreter exits
    atexit.register(lambda: Path(out_dir, f"rank{rank}.open").write_text(str(torch.distributed.is_initialized())))


def test_processes_that_logged_different_loss_parts_reduce_the_common_ones_and_close_the_group(tmp_path):
    done = torchrun("keys_job", {"out_dir": str(tmp_path)}, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [["loss", "margin"]] * 2
    assert [(tmp_path / f"rank{r}.open").read_text() for r in (0, 1)] == ["False"] * 2


def preference_job(model_dir: str, checkpoint_dir: str, distributed: str = "ddp") -> None:
    """A DPPO penalty (unll, y_gen scored with autograd) on 16 rows, batches of 4 in micro batches
    of 1 (2 accumulated per process under torchrun), probe rows logged at every step, and the
    chunked LM head at any size (it reaches into the model behind the DDP wrapper; FSDP2 takes
    the plain head)."""
    from unittest import mock

    from test_reliability import preference_rows

    from dppo.runtime.io import load_tokenizer
    from dppo.settings import Experiment, LossSettings, OptimSettings
    from dppo.train import logprobs
    from dppo.train.preference import train_seed

    rows = preference_rows(load_tokenizer(model_dir), 16)
    experiment = Experiment(name="pref_probe", loss=LossSettings(name="unll", f="linear", alpha=0.5),
                            optim=OptimSettings(lr=1e-2, batch_size=4, micro_batch_size=1, warmup_ratio=0.0,
                                                bf16=False), probe_rows=2, probe_every=1)
    with mock.patch.object(logprobs, "FULL_LOGITS_MAX", 0):
        train_seed(experiment, 0, Path(model_dir), rows, rows.iloc[:2], Path(checkpoint_dir), False, -1, distributed)


@pytest.mark.slow
@pytest.mark.parametrize("distributed", STRATEGIES)
def test_preference_training_under_torchrun_equals_one_process(tmp_path, tiny_model_dir, distributed):
    done = torchrun("preference_job", {"model_dir": str(tiny_model_dir), "checkpoint_dir": str(tmp_path / "two"),
                                       "distributed": distributed})
    assert done.returncode == 0, done.stdout[-4000:]
    preference_job(str(tiny_model_dir), str(tmp_path / "one"))
    [two_dir], [one_dir] = (tmp_path / "two").glob("run-*"), (tmp_path / "one").glob("run-*")
    two, one = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (two_dir, one_dir))
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3, 4]
    assert all("probe_logp_gen" in m for m in two)  # the probe ran through the wrapped model's inner one
    prompt_and_responses = 8 + 2 + 3 + 2
    assert_same_training(two_dir / "final", one_dir / "final", tiny_model_dir, 4, 4 * prompt_and_responses)
