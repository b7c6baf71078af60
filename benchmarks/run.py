"""Benchmark table: our preference step vs TRL's DPOTrainer, DPPO vs DPO, y_gen pregeneration
throughput, and the pipeline's wall time.

    python benchmarks/run.py                  # every row, then the table and benchmarks/results.csv
    python benchmarks/run.py --only ours_dpo trl_fast --steps 5

The end-to-end run of the embedded default (wall time, start-up against work per rule, side by
side with an earlier commit) is benchmarks/e2e.py.

Every training row runs in a fresh subprocess (so its peak RSS is its own) on the same model,
data, batch size and number of steps, with ``torch.set_num_threads(--threads)``; the first
``--warmup`` optimizer steps are excluded from the timing. TRL is an optional dependency
(``pip install -e ".[bench]"``); its rows are skipped with a note when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import fmt, has_trl, machine, proc_status_kib, publish, work_directory, write_csv

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "benchmarks" / "results.csv"

# name -> (kind, description). Order is the table's order.
ROWS = {
    "trl_default": ("train", "TRL DPOTrainer, defaults (reference forward, grad checkpointing, bf16 autocast)"),
    "trl_fast": ("train", "TRL DPOTrainer, precompute_ref_log_probs, no grad checkpointing, fp32"),
    "ours_dpo_unsorted": ("train", "ours DPO, random batches (no length grouping), track_gen=False"),
    "ours_dpo": ("train", "ours DPO, track_gen=False"),
    "ours_dpo_track_gen": ("train", "ours DPO, track_gen=True (y_gen scored without autograd on the shared prompts)"),
    "ours_dppo": ("train", "ours DPPO unll token-level f=linear alpha 0.1 (y_gen with autograd where alpha f(r) != 0)"),
    "gen_b1": ("generate", "y_gen greedy, transformers backend, batch 1"),
    "gen_b64": ("generate", "y_gen greedy, transformers backend, batch 64"),
    "dry_run_paper": ("workflow", "snakemake -n all --configfile configs/paper.yaml"),
    "dry_run_paper_no_scontrol": ("workflow", "the same, `scontrol` failing at once (as without a SLURM client)"),
}
# (numerator, denominator, target): ratio of steps/s; target None = informational.
RATIOS = [
    ("ours_dpo", "trl_default", ">= 2.0"),
    ("ours_dpo", "trl_fast", ">= 1.2"),
    ("ours_dpo", "ours_dpo_unsorted", None),
    ("ours_dppo", "ours_dpo", "step time <= 1.4x (steps/s ratio >= 0.714)"),
    ("ours_dpo_track_gen", "ours_dpo", None),
    ("gen_b64", "gen_b1", None),
]


# ----------------------------------------------------------------------------- set-up (parent)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads per row (default 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps (one epoch) per training row")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps on other rows before them")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(32, 128), metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"))
    p.add_argument("--gen-prompts", type=int, default=64)
    p.add_argument("--gen-new-tokens", type=int, default=32)
    p.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    p.add_argument("--csv", type=Path, default=RESULTS_CSV)
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    # internal: one row in this process
    p.add_argument("--worker", choices=list(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="with --worker: print a torch.profiler table")
    return p.parse_args(argv)


def build_inputs(args, workdir: Path) -> None:
    """The benchmark model (a Llama bigger than the embedded one) and random preference rows,
    as token ids (ours) and as the identical text (TRL tokenizes itself)."""
    import numpy as np
    import torch

    from dppo.data.tiny_model import IM_END, save_tiny_model
    from dppo.settings import TinyModelSpec
    from dppo.train.logprobs import response_logps

    torch.set_num_threads(args.threads)
    words = [f"w{i}" for i in range(args.vocab - 4)]  # + 4 special tokens
    spec = TinyModelSpec(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2), intermediate_size=3 * args.hidden,
        max_position_embeddings=args.prompt_len[1] + args.response_len[1] + 8, seed=0,
    )
    model_dir = save_tiny_model(workdir / "model", words, spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = np.random.default_rng(0)

    def text(lo_hi, eos: bool) -> str:
        n = int(rng.integers(lo_hi[0], lo_hi[1] + 1)) - int(eos)
        return " ".join(words[i] for i in rng.integers(0, len(words), n)) + (f" {IM_END}" if eos else "")

    rows = []
    for _ in range(max(args.gen_prompts, (args.warmup + args.steps) * args.batch_size)):
        row = {"prompt": text(args.prompt_len, False)}
        for key in ("chosen", "rejected", "gen"):
            row[key] = " " + text(args.response_len, True)  # TRL concatenates prompt + completion
        for key in ("prompt", "chosen", "rejected", "gen"):
            row[f"{key}_ids"] = tokenizer(row[key], add_special_tokens=False)["input_ids"]
        rows.append(row)

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            block = rows[start : start + 32]
            sums = response_logps(
                model, [r["prompt_ids"] for r in block],
                [[r["chosen_ids"], r["rejected_ids"], r["gen_ids"]] for r in block], tokenizer.pad_token_id,
            ).sums
            for r, s in zip(block, sums.tolist()):
                r["ref_chosen"], r["ref_rejected"], r["ref_gen"] = s
    (workdir / "rows.json").write_text(json.dumps(rows))
    n_params = sum(p.numel() for p in model.parameters())
    (workdir / "model_info.json").write_text(json.dumps({"params": n_params, **spec.__dict__}))


# ----------------------------------------------------------------------------- workers


def _rss_now_kib() -> int:
    return proc_status_kib("VmRSS")


def _peak_rss_kib() -> int:
    return proc_status_kib("VmHWM")


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall clock at the end of every optimizer step; steps/s over the steps after warm-up."""

        def __init__(self):
            self.start, self.ends, self.losses = None, [], []

        def on_step_begin(self, args, state, control, **kwargs):
            if self.start is None:
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def steps_per_s(self) -> float:
            return len(self.ends) / (self.ends[-1] - self.start)

    return StepTimer()


def _train_args(args, out: Path, **overrides) -> dict:
    return dict(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=0, data_seed=0, **overrides,
    )


def _warm_then_time(args, make_trainer, rows: list[dict]):
    """Warm up on the first ``--warmup`` batches with a throwaway trainer, then time one epoch
    over the other rows (exactly ``--steps`` batches), so every row times the same data."""
    split = args.warmup * args.batch_size
    if args.warmup:
        make_trainer(rows[:split], args.warmup, []).train()
    timer = _step_timer()
    trainer = make_trainer(rows[split:], args.steps, [timer])
    _profiled(args, trainer)
    return trainer, timer


def _profiled(args, trainer) -> None:
    if not args.profile:
        trainer.train()
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)


def worker_trl(args, name: str, rows: list[dict], model_dir: Path, out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    overrides = {}  # trl_default: DPOConfig's own defaults for everything else
    if name == "trl_fast":
        overrides = dict(precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=False)
    configs = []

    def make_trainer(part, steps, callbacks):
        data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in part])
        configs.append(DPOConfig(**_train_args(args, out), max_steps=steps, beta=0.1, max_length=None, **overrides))
        return DPOTrainer(model=model, args=configs[-1], train_dataset=data, processing_class=tokenizer,
                          callbacks=callbacks)

    baseline = _rss_now_kib()
    _, timer = _warm_then_time(args, make_trainer, rows)
    settings = {k: getattr(configs[-1], k) for k in ("gradient_checkpointing", "bf16", "precompute_ref_log_probs")}
    return {"timer": timer, "baseline_kib": baseline, "settings": settings}


class TimedTask:
    """A task that records the wall clock at every loss call of the timed epoch (one micro
    batch = one optimizer step here) and the first loss."""

    def __init__(self, task):
        self.task, self.ends, self.losses, self.start = task, [], [], None

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, rows):
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        else:
            self.ends.append(now)
        loss, parts = self.task.loss(model, rows)
        self.losses.append(float(loss))
        return loss, parts

    def steps_per_s(self) -> float:
        return len(self.ends) / (self.ends[-1] - self.start)


def worker_ours(args, name: str, rows: list[dict], model_dir: Path, out: Path) -> dict:
    from dppo.runtime.io import load_causal_lm, load_tokenizer
    from dppo.settings import Experiment, LossSettings, OptimSettings
    from dppo.train.loop import train
    from dppo.train.preference import PreferenceTask
    from dppo.train.rows import preference_records

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    loss = LossSettings(name="unll", f="linear", alpha=0.1) if name == "ours_dppo" else LossSettings(name="dpo")
    opt = OptimSettings(batch_size=args.batch_size, group_by_length=name != "ours_dpo_unsorted", lr=1e-4,
                        scheduler="constant", warmup_ratio=0.0, save_steps=10_000)
    experiment = Experiment(name=name, loss=loss, optim=opt, track_gen=name == "ours_dpo_track_gen", probe_rows=0)
    split = args.warmup * args.batch_size
    records = preference_records(rows)
    baseline = _rss_now_kib()
    if args.warmup:
        train(model, tokenizer, records[:split], PreferenceTask(experiment, records[:split], tokenizer.pad_token_id, []),
              opt, out / "warmup", {"stage": "warmup"})
    timed = records[split:split + (args.steps + 1) * args.batch_size]  # the first step starts the clock
    task = TimedTask(PreferenceTask(experiment, timed, tokenizer.pad_token_id, []))
    train(model, tokenizer, timed, task, opt, out / "timed", {"stage": name})
    settings = {"loss": loss.name, "group_by_length": opt.group_by_length, "track_gen": experiment.track_gen}
    return {"timer": task, "baseline_kib": baseline, "settings": settings}


def worker_generate(args, name: str, rows: list[dict], model_dir: Path, out: Path) -> dict:
    from dppo.infer.generation import generate_greedy

    prompts = [r["prompt_ids"] for r in rows[: args.gen_prompts]]
    from dppo.settings import GenerationSettings

    batch_size = 1 if name == "gen_b1" else 64
    settings = GenerationSettings(batch_size=batch_size)
    baseline = _rss_now_kib()
    generate_greedy(model_dir, prompts[:2], 4, settings)  # warm-up
    start = time.perf_counter()
    generated = generate_greedy(model_dir, prompts, args.gen_new_tokens, settings)
    seconds = time.perf_counter() - start
    tokens = sum(len(g) for g in generated)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "baseline_kib": baseline,
            "settings": {"batch_size": batch_size, "prompts": len(prompts), "tokens": tokens}}


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = json.loads((args.workdir / "rows.json").read_text())
    model_dir = args.workdir / "model"
    out = Path(tempfile.mkdtemp(prefix=f"{args.worker}_", dir=args.workdir))
    kind = ROWS[args.worker][0]
    if kind == "generate":
        result = worker_generate(args, args.worker, rows, model_dir, out)
    else:
        worker = worker_trl if args.worker.startswith("trl") else worker_ours
        result = worker(args, args.worker, rows, model_dir, out)
        timer = result.pop("timer")
        result.update(steps_per_s=timer.steps_per_s(), steps=len(timer.ends), first_loss=timer.losses[0])
        result.pop("trainer", None)
    result["peak_rss_mib"] = _peak_rss_kib() / 1024
    result["peak_rss_delta_mib"] = (_peak_rss_kib() - result.pop("baseline_kib")) / 1024
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- parent


def run_row(args, name: str, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--gen-prompts", str(args.gen_prompts), "--gen-new-tokens", str(args.gen_new_tokens)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": str(args.threads), "HF_DATASETS_CACHE": str(workdir / "hf_datasets")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        output = (done.stderr or done.stdout).strip().splitlines()
        return {"error": output[-1][:200] if output else f"rc={done.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def run_workflow_row(name: str, workdir: Path) -> dict:
    """Wall time of a snakemake command in a fresh directory (the repository's Snakefile)."""
    target = workdir / name
    target.mkdir()
    # The SLURM executor plugin runs `scontrol show config` at import; where a SLURM client is
    # installed but no controller answers, that waits ~9 s. The *_no_scontrol row hides it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if name.endswith("no_scontrol"):
        fake = workdir / "no_scontrol_bin"
        fake.mkdir()
        (fake / "scontrol").write_text("#!/bin/sh\nexit 1\n")  # what the plugin sees without SLURM
        (fake / "scontrol").chmod(0o755)
        path = f"{fake}{os.pathsep}{path}"
    env = {**os.environ, "PATH": path, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(target)]
    if name.startswith("dry_run_paper"):
        cmd += ["-n", "all", "--configfile", str(ROOT / "configs" / "paper.yaml")]
        env["DPPO_SKIP_VLLM_CHECK"] = "1"  # the plan only: its `import vllm` check is not timed (nor needed)
    else:
        cmd += ["--cores", "2", "all", "--configfile", str(ROOT / "config.yaml")]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        (workdir / f"{name}.log").write_text(done.stdout + done.stderr)
        return {"error": f"rc={done.returncode}, log in {workdir / f'{name}.log'}"}
    return {"seconds": seconds}


def settings_header(args, info: dict) -> str:
    import torch

    return (
        f"model: Llama, hidden {info['hidden_size']}, {info['num_hidden_layers']} layers, "
        f"{info['num_attention_heads']} heads ({info['num_key_value_heads']} kv), intermediate "
        f"{info['intermediate_size']}, vocab {args.vocab}, {info['params'] / 1e6:.2f}M params\n"
        f"data: {(args.warmup + args.steps) * args.batch_size} rows, prompt {args.prompt_len[0]}-"
        f"{args.prompt_len[1]} tokens, responses "
        f"{args.response_len[0]}-{args.response_len[1]} tokens (uniform); batch {args.batch_size}; "
        f"{args.warmup} warm-up steps (own rows), then one timed epoch of {args.steps} optimizer steps; "
        f"AdamW lr 1e-4 constant\n"
        f"machine: {machine()}; torch {torch.__version__}, {args.threads} torch thread(s) per row\n"
    )


def format_table(results: dict) -> str:
    lines = [f"{'row':<20} {'steps/s':>9} {'s/step':>8} {'tok/s':>9} {'wall s':>8} {'peak RSS MiB':>13} "
             f"{'delta MiB':>10}  description"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<20} FAILED: {r['error']}")
            continue
        sps = r.get("steps_per_s")
        lines.append(
            f"{name:<20} {fmt(sps, '.3f'):>9} {fmt(1 / sps if sps else None, '.3f'):>8} "
            f"{fmt(r.get('tokens_per_s'), '.1f'):>9} {fmt(r.get('seconds'), '.1f'):>8} "
            f"{fmt(r.get('peak_rss_mib'), '.0f'):>13} {fmt(r.get('peak_rss_delta_mib'), '.0f'):>10}  {ROWS[name][1]}"
        )
    lines.append("")
    for num, den, target in RATIOS:
        a, b = results.get(num, {}), results.get(den, {})
        key = "tokens_per_s" if ROWS[num][0] == "generate" else "steps_per_s"
        if key in a and key in b:
            lines.append(f"{num} / {den} ({key}): {a[key] / b[key]:.2f}" + (f"   target {target}" if target else ""))
    return "\n".join(lines)


def write_results(path: Path, results: dict, header: str) -> None:
    write_csv(path, results, header, "row", {name: row[1] for name, row in ROWS.items()},
              ["steps_per_s", "tokens_per_s", "seconds", "peak_rss_mib", "peak_rss_delta_mib", "first_loss",
               "settings", "error"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    names = args.only or list(ROWS)
    with work_directory("dppo_bench_", keep=args.keep) as workdir:
        build_inputs(args, workdir)
        info = json.loads((workdir / "model_info.json").read_text())
        header = settings_header(args, info)
        print(header, flush=True)
        results = {}
        for name in names:
            if name.startswith("trl") and not has_trl():
                results[name] = {"error": 'TRL not installed (pip install -e ".[bench]")'}
                continue
            print(f"running {name} ...", flush=True)
            kind = ROWS[name][0]
            results[name] = run_workflow_row(name, workdir) if kind == "workflow" else run_row(args, name, workdir)
            print(f"  {results[name]}", flush=True)
        publish(header, format_table(results), write_results, args.csv, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
