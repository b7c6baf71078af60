"""Peak memory and step time of the response log-probs at Qwen2.5's vocabulary (151,936):
today's full-logits head, the chunked head (dppo.train.chunked_head.token_logps) and TRL's DPOTrainer.

    python benchmarks/logprob_memory.py                # every variant, the table, benchmarks/logprob_memory.csv
    python benchmarks/logprob_memory.py --only today chunked --steps 2

Every variant runs in a fresh subprocess (its peak RSS is its own: VmHWM, and the delta from its
RSS once the model is built) on the same randomly initialised Qwen2-architecture model (built
from a config with one seed, nothing downloaded) and the same random-token preference rows,
with ``torch.set_num_threads(--threads)``. A step is one DPO (sigmoid, beta 0.1) training step
on all rows at once: forward, backward, gradient clipping to norm 1 and an AdamW update (lr 1e-4),
as TRL's step does; the reference log-probs are precomputed (as the pipeline caches them, and
TRL's ``precompute_ref_log_probs=True``). Step time is the median of ``--steps`` steps after
``--warmup`` untimed ones. A separate ``check`` subprocess compares today's and the chunked
path's summed log-probs and every parameter gradient on the initial model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import fmt, has_trl, machine, proc_status_kib, publish, work_directory, write_csv

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "benchmarks" / "logprob_memory.csv"
PAD = 0

# name -> description. Order is the table's order.
VARIANTS = {
    "today": "the full-logits head (the pipeline before the chunked head): float32 logits (response tokens, vocab)",
    "chunked": "dppo.train.logprobs.response_logps: hidden states at the scored positions + dppo.train.chunked_head.token_logps",
    "chunked_small": "the same with CPU-sized tiles (--small-chunks)",
    "trl": "TRL DPOTrainer step, fused chunked head, precompute_ref_log_probs, no grad checkpointing, fp32",
}
# (numerator, denominator, quantity, goal); quantity "mem" = peak RSS delta, "time" = median step s
RATIOS = [
    ("chunked", "today", "mem", "<= 0.25"),
    ("chunked", "trl", "mem", "<= 1.0"),
    ("chunked", "today", "time", "<= 1.0"),
    ("chunked", "trl", "time", None),
    ("chunked_small", "today", "mem", "<= 0.25"),
    ("chunked_small", "trl", "mem", "<= 1.0"),
    ("chunked_small", "today", "time", "<= 1.0"),
    ("chunked_small", "trl", "time", None),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant (default 1)")
    p.add_argument("--rows", type=int, default=4, help="preference rows, all in one batch")
    p.add_argument("--prompt-len", type=int, nargs=2, default=(48, 80), metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=(256, 500), metavar=("MIN", "MAX"))
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--untied", action="store_true", help="untied LM head (Qwen2.5-0.5B ties it: default tied)")
    p.add_argument("--chunks", type=int, nargs=2, default=(4096, 32768), metavar=("TOKENS", "VOCAB"),
                   help="token_logps tiles of the chunked variant (default: the function's defaults)")
    p.add_argument("--small-chunks", type=int, nargs=2, default=(512, 4096), metavar=("TOKENS", "VOCAB"),
                   help="tiles of the chunked_small variant")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--only", nargs="+", choices=[*VARIANTS, "check"], help="run only these")
    p.add_argument("--csv", type=Path, default=CSV_PATH)
    p.add_argument("--worker", choices=[*VARIANTS, "check"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model and data


def build_model(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=args.prompt_len[1] + args.response_len[1] + 8,
        tie_word_embeddings=not args.untied, pad_token_id=PAD, bos_token_id=1, eos_token_id=1,
    )
    return Qwen2ForCausalLM(config).train()


def make_rows(args) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)

    def ids(lo_hi):
        return rng.integers(1, args.vocab, int(rng.integers(lo_hi[0], lo_hi[1] + 1))).tolist()

    return [{"prompt_ids": ids(args.prompt_len), "chosen_ids": ids(args.response_len),
             "rejected_ids": ids(args.response_len)} for _ in range(args.rows)]


# ----------------------------------------------------------------------------- the two heads


def _sums(model, rows):
    from dppo.train.logprobs import response_logps

    return response_logps(model, [r["prompt_ids"] for r in rows],
                          [[r["chosen_ids"], r["rejected_ids"]] for r in rows], PAD).sums


def today_sums(model, rows):
    """The full-logits head (what dppo.train.logprobs does where the head is not a plain linear map,
    and did everywhere before the chunked head): float32 logits at every scored position."""
    from unittest import mock

    with mock.patch("dppo.train.logprobs.linear_head", return_value=None):
        return _sums(model, rows)


def chunked_sums(model, rows, token_chunk: int, vocab_chunk: int):
    """The pipeline's path: no head in the model's forward, the last hidden states at the
    scored positions through dppo.train.chunked_head.token_logps, in tiles of (token_chunk, vocab_chunk)."""
    from unittest import mock

    tiles = {"cpu": (token_chunk, vocab_chunk), "cuda": (token_chunk, vocab_chunk)}
    with mock.patch.dict("dppo.train.logprobs.HEAD_TILES", tiles):
        return _sums(model, rows)


def dpo_loss(sums, ref, beta: float = 0.1):
    import torch.nn.functional as F

    margin = (sums[:, 0] - ref[:, 0]) - (sums[:, 1] - ref[:, 1])
    return -F.logsigmoid(beta * margin).mean()


# ----------------------------------------------------------------------------- workers


def _sums_fn(args, name):
    if name == "today":
        return today_sums
    chunks = args.chunks if name == "chunked" else args.small_chunks
    return lambda model, rows: chunked_sums(model, rows, *chunks)


def worker_ours(args, name: str, rows: list[dict]) -> dict:
    import torch

    model = build_model(args)
    ref = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sums_fn = _sums_fn(args, name)
    baseline = proc_status_kib("VmRSS")
    times, first = [], None
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        sums = sums_fn(model, rows)
        loss = dpo_loss(sums, ref)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        if first is None:
            first = {"loss": float(loss), "logps_chosen": float(sums[:, 0].mean()),
                     "logps_rejected": float(sums[:, 1].mean())}
    return {"baseline_kib": baseline, "times": times[args.warmup:], **first}


def worker_trl(args, rows: list[dict], workdir: Path) -> dict:
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """The rows are token ids already (prompt_ids, chosen_ids, rejected_ids): skip the text
        preparation (prompt extraction, EOS appending, tokenization); the training step is TRL's."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.times, self.logs = None, [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.begin)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logs.append(dict(logs))

    # a two-token tokenizer: TRL wants a processing class for its pad token, nothing is tokenized
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<pad>": PAD, "<eos>": 1}, unk_token="<pad>")),
        pad_token="<pad>", eos_token="<eos>",
    )
    model = build_model(args)
    data = Dataset.from_list([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in rows])
    config = DPOConfig(
        output_dir=str(workdir / "trl_out"), per_device_train_batch_size=len(rows), gradient_accumulation_steps=1,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, max_steps=args.warmup + args.steps,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=0, data_seed=0, beta=0.1, max_length=None,
        precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=False,
    )
    timer = StepTimer()
    baseline = proc_status_kib("VmRSS")
    trainer = PreTokenizedDPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                     callbacks=[timer])
    trainer.train()
    first = timer.logs[0]
    settings = {k: getattr(config, k) for k in ("precompute_ref_log_probs", "gradient_checkpointing", "bf16",
                                                  "loss_type", "max_grad_norm", "optim")}
    return {"baseline_kib": baseline, "times": timer.times[args.warmup:], "loss": first["loss"],
            "logps_chosen": first.get("logps/chosen"), "logps_rejected": first.get("logps/rejected"),
            "settings": {k: str(v) for k, v in settings.items()}}


def worker_check(args, rows: list[dict]) -> dict:
    """Today's vs the chunked path on the initial model: summed log-probs and every parameter
    gradient of the DPO loss."""
    import torch

    model = build_model(args)
    ref = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows])
    results = {}
    for name in ("today", "chunked", "chunked_small"):
        sums = _sums_fn(args, name)(model, rows)
        dpo_loss(sums, ref).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        results[name] = (sums.detach(), grads)
    base_sums, base_grads = results["today"]
    out = {"today_sums": base_sums.tolist()}
    for name in ("chunked", "chunked_small"):
        sums, grads = results[name]
        assert grads.keys() == base_grads.keys()
        grad_err = max(float((grads[k] - base_grads[k]).abs().max()) for k in grads)
        grad_scale = max(float(base_grads[k].abs().max()) for k in grads)
        out[name] = {
            "max_abs_sum_diff": float((sums - base_sums).abs().max()),
            "max_abs_sum": float(base_sums.abs().max()),
            "max_abs_grad_diff": grad_err,
            "max_abs_grad": grad_scale,
            "params_compared": len(grads),
        }
    return out


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = json.loads((args.workdir / "rows.json").read_text())
    if args.worker == "check":
        result = worker_check(args, rows)
    elif args.worker == "trl":
        result = worker_trl(args, rows, args.workdir)
    else:
        result = worker_ours(args, args.worker, rows)
    if "baseline_kib" in result:
        peak = proc_status_kib("VmHWM")
        times = result.pop("times")
        result.update(peak_rss_mib=peak / 1024, peak_rss_delta_mib=(peak - result.pop("baseline_kib")) / 1024,
                      step_s=statistics.median(times), step_times=times)
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- parent


def prepare(args, workdir: Path) -> dict:
    """Rows with their reference log-probs (the initial model, chunked head, no grad)."""
    import torch

    torch.set_num_threads(args.threads)
    rows = make_rows(args)
    model = build_model(args).eval()
    with torch.no_grad():
        ref = chunked_sums(model, rows, *args.chunks)
    for r, (c, j) in zip(rows, ref.tolist()):
        r["ref_chosen"], r["ref_rejected"] = c, j
    (workdir / "rows.json").write_text(json.dumps(rows))
    response_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    trl_positions = 2 * len(rows) * (max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                         for r in rows) - 1)
    return {"params": sum(p.numel() for p in model.parameters()), "response_tokens": response_tokens,
            "trl_positions": trl_positions, "tied": model.config.tie_word_embeddings}


def run_variant(args, name: str, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--threads", str(args.threads),
           "--rows", str(args.rows), "--prompt-len", *map(str, args.prompt_len),
           "--response-len", *map(str, args.response_len), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--chunks", *map(str, args.chunks),
           "--small-chunks", *map(str, args.small_chunks), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.untied:
        cmd.append("--untied")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": str(args.threads), "HF_DATASETS_CACHE": str(workdir / "hf_datasets"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        output = (done.stderr or done.stdout).strip().splitlines()
        (workdir / f"{name}.log").write_text(done.stdout + done.stderr)
        return {"error": output[-1][:300] if output else f"rc={done.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def settings_header(args, info: dict) -> str:
    import torch

    return (
        f"model: random Qwen2 (config only), hidden {args.hidden}, {args.layers} layers, 4 heads (2 kv), "
        f"intermediate {4 * args.hidden}, vocab {args.vocab}, {'tied' if info['tied'] else 'untied'} LM head, "
        f"{info['params'] / 1e6:.2f}M params, float32\n"
        f"data: {args.rows} rows in one batch, random token ids, prompt {args.prompt_len[0]}-{args.prompt_len[1]}, "
        f"chosen/rejected {args.response_len[0]}-{args.response_len[1]} tokens: {info['response_tokens']} response "
        f"tokens scored by ours, {info['trl_positions']} positions by TRL (on CPU it runs its head at every "
        f"position of the padded prompt+completion rows)\n"
        f"step: DPO sigmoid beta 0.1, precomputed reference log-probs, backward, clip 1.0, AdamW lr 1e-4; "
        f"median of {args.steps} steps after {args.warmup} warm-up; chunked tiles {args.chunks[0]}x{args.chunks[1]}, "
        f"chunked_small {args.small_chunks[0]}x{args.small_chunks[1]}\n"
        f"machine: {machine()} (shared with other jobs); torch {torch.__version__}, {args.threads} thread(s)\n"
    )


def format_table(results: dict, check: dict | None) -> str:
    lines = [f"{'variant':<14} {'peak RSS delta MiB':>19} {'peak RSS MiB':>13} {'step s (median)':>16} "
             f"{'steps s':>22} {'loss@0':>8} {'logps_w@0':>11}  description"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<14} FAILED: {r['error']}")
            continue
        steps = ",".join(f"{t:.2f}" for t in r["step_times"])
        lines.append(f"{name:<14} {r['peak_rss_delta_mib']:>19.0f} {r['peak_rss_mib']:>13.0f} {r['step_s']:>16.2f} "
                     f"{steps:>22} {r['loss']:>8.4f} {fmt(r.get('logps_chosen'), '.2f'):>11}  {VARIANTS[name]}")
    lines.append("")
    for num, den, qty, goal in RATIOS:
        a, b = results.get(num, {}), results.get(den, {})
        key = "peak_rss_delta_mib" if qty == "mem" else "step_s"
        if key in a and key in b:
            ratio = a[key] / b[key]
            verdict = "" if goal is None else ("   goal " + goal + (": met" if ratio <= float(goal[3:]) else ": MISSED"))
            lines.append(f"{num} / {den} ({'peak RSS delta' if qty == 'mem' else 'step time'}): {ratio:.3f}{verdict}")
    if check:
        lines.append("")
        if "error" in check:
            lines.append(f"equality check FAILED: {check['error']}")
        else:
            for name in ("chunked", "chunked_small"):
                c = check[name]
                lines.append(
                    f"{name} vs today (initial model): max |d summed logp| {c['max_abs_sum_diff']:.2e} "
                    f"(sums up to {c['max_abs_sum']:.1f}), max |d grad| {c['max_abs_grad_diff']:.2e} "
                    f"(grads up to {c['max_abs_grad']:.2e}) over {c['params_compared']} parameters"
                )
    return "\n".join(lines)


def write_results(path: Path, results: dict, header: str) -> None:
    write_csv(path, results, header, "variant", VARIANTS,
              ["peak_rss_delta_mib", "peak_rss_mib", "step_s", "step_times", "loss", "logps_chosen",
               "logps_rejected", "settings", "error"], json_fields=("step_times", "settings"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    names = args.only or [*VARIANTS, "check"]

    with work_directory("dppo_logprob_mem_") as workdir:
        info = prepare(args, workdir)
        header = settings_header(args, info)
        print(header, flush=True)
        results, check = {}, None
        for name in names:
            if name == "trl" and not has_trl():
                results[name] = {"error": 'TRL not installed (pip install -e ".[bench]")'}
                continue
            print(f"running {name} ...", flush=True)
            result = run_variant(args, name, workdir)
            print(f"  {result}", flush=True)
            if name == "check":
                check = result
            else:
                results[name] = result
        publish(header, format_table(results, check), write_results, args.csv, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
