"""GPU check: training, generation and scoring throughput of this repository's own code paths
on a randomly initialised Qwen2.5-0.5B-shaped model, as ONE table. Run it with
``bash benchmarks/gpu_check.sh`` (one H100/H200, at most 8 minutes, nothing downloaded);
``--dry-run`` runs every code path on a tiny model on the CPU in under a minute.

Rows (each in the table whether it ran, failed or was skipped, with the reason):

- ``sft``: :class:`dppo.train.sft.SFTTask` through :func:`dppo.train.loop.train` (the pipeline's loop:
  bf16 autocast, AdamW, clipping, the finiteness checks and metrics of every step), tokens/s and MFU.
- ``dpo``: :class:`dppo.train.preference.PreferenceTask` (loss dpo, cached reference log-probs, the
  shared-prompt forward) through the same loop.
- ``generate``: :func:`dppo.infer.generation.generate_greedy`, engine transformers and engine vllm
  (same prompts, same batch size), new tokens/s with the model load excluded.
- ``score seqcls`` / ``score nemotron``: :func:`dppo.infer.rewards.reward_backend` with engine
  transformers and engine vllm, rows/s and MFU (model load and a short warm-up excluded).

The model is built from a config (random weights) and saved in bfloat16 like the real
checkpoint, so every stage loads it as the pipeline would load ``Qwen/Qwen2.5-0.5B``. The
nemotron-shaped scorer is that causal LM (reward = raw logit of token 0 after the chat); the
seqcls-shaped one a ``Qwen2ForSequenceClassification`` of the same shape with one label.
The main environment's rows run in one worker process, the vLLM ones in another under the vLLM
environment's interpreter (its own torch and transformers), one after the other.

FLOPs (the MFU numerator counts the work the code asks for, from the real token counts):
``N_body`` = parameters outside the embedding / LM head (358M for this shape), ``N_head`` =
vocab x hidden (136M; the head runs only where a token is scored: response positions in
training, the last position when scoring), ``L`` layers, ``d_q`` = heads x head size (896),
``A`` = the (query, key) pairs causal attention computes (a sequence of n tokens: n(n+1)/2;
DPO's shared prompt: the prompt once, then each response on its cache). Training FLOPs =
``6 N_body T + 6 N_head T_head + 12 L d_q A`` (T = token positions run through the layers);
forward only (scoring) ``2 N_body T + 2 N_head T_head + 4 L d_q A``. MFU = FLOPs / time /
peak dense bf16 FLOP/s: 989.4 TFLOP/s for H100 SXM and H200 (NVIDIA's datasheets, without
sparsity), 835 for H100 NVL / H200 NVL, 756 for H100 PCIe; ``--peak-tflops`` overrides.
Generation (memory bound decoding) shows tokens/s only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW_ORDER = [
    ("sft", "transformers"), ("dpo", "transformers"),
    ("generate", "transformers"), ("generate", "vllm"),
    ("score seqcls", "transformers"), ("score seqcls", "vllm"),
    ("score nemotron", "transformers"), ("score nemotron", "vllm"),
]  # fmt: skip
# Peak dense bf16 tensor-core FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = [("H200 NVL", 835.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H200", 989.4), ("H100", 989.4)]
VLLM_BUILD_HINT = (
    "build it with `python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm pandas pyarrow && "
    ".venv-vllm/bin/pip install --no-deps -e .` on the GPU machine (CPU: `bash .ci/vllm_env.sh`)"
)

# Qwen2.5-0.5B's shape (its config.json), and a tiny one of the same family for --dry-run whose
# head size (32) vLLM's CPU attention takes.
QWEN_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                intermediate_size=4864, vocab_size=151_936, tie_word_embeddings=True,
                max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True,
            max_position_embeddings=512, rope_theta=10_000.0, rms_norm_eps=1e-6)

# (full run, --dry-run) sizes
SIZES = {
    "batch_size": (16, 4), "prompt_len": (256, 16), "response_len": (256, 16), "warmup": (3, 1), "steps": (20, 2),
    "gen_prompts": (256, 8), "gen_prompt_len": (128, 16), "gen_new_tokens": (128, 8), "gen_batch_size": (64, 8),
    "score_rows": (512, 16), "score_batch_size": (32, 8), "budget_s": (450, 170),
}  # fmt: skip


def say(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- FLOPs


def shape_numbers(shape: dict) -> dict:
    h, heads = shape["hidden_size"], shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or h // heads
    kv, inter, layers = shape["num_key_value_heads"], shape["intermediate_size"], shape["num_hidden_layers"]
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + (heads + 2 * kv) * head_dim  # q,k,v,o + qkv bias
    body = layers * (attn + 3 * h * inter + 2 * h) + h  # + the two norms per layer, the final norm
    return {"n_body": body, "n_head": shape["vocab_size"] * h, "layers": layers, "d_q": heads * head_dim}


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def flops(numbers: dict, tokens: int, head_tokens: int, pairs: int, train: bool) -> float:
    k = 3 if train else 1  # backward = 2 x forward
    return k * (2 * numbers["n_body"] * tokens + 2 * numbers["n_head"] * head_tokens
                + 4 * numbers["layers"] * numbers["d_q"] * pairs)


def sft_work(rows: list[dict]) -> tuple[int, int, int]:
    """(T, T_head, A) of one SFT batch: one forward over each prompt + response."""
    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows]
    return sum(lengths), sum(len(r["response_ids"]) for r in rows), sum(causal_pairs(n) for n in lengths)


def dpo_work(rows: list[dict], shared: bool) -> tuple[int, int, int]:
    """(T, T_head, A) of one DPO batch; ``shared``: the prompt minus its last token is encoded once,
    then (last prompt token + response[:-1]) of y_w and y_l run on its cache."""
    tokens = head = pairs = 0
    for r in rows:
        p, responses = len(r["prompt_ids"]), (len(r["chosen_ids"]), len(r["rejected_ids"]))
        head += sum(responses)
        if shared:
            tokens += (p - 1) + sum(responses)
            pairs += causal_pairs(p - 1) + sum(n * (p - 1) + causal_pairs(n) for n in responses)
        else:
            tokens += sum(p + n for n in responses)
            pairs += sum(causal_pairs(p + n) for n in responses)
    return tokens, head, pairs


# ----------------------------------------------------------------------------- data and models


def make_data(args, vocab_size: int) -> dict:
    """Random token ids for training and generation (ids below N_SPECIAL are special tokens);
    random lowercase text for scoring (one token per letter, see :func:`build_tokenizer`)."""
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(N_SPECIAL, vocab_size) for _ in range(n)]

    def text(top: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(max(1, top // 8), top)))

    n_train = 4 * args.batch_size
    sft = [{"prompt_ids": ids(args.prompt_len), "response_ids": ids(args.response_len)} for _ in range(n_train)]
    dpo = [{"prompt_ids": ids(args.prompt_len), "chosen_ids": ids(args.response_len),
            "rejected_ids": ids(args.response_len), "gen_ids": ids(args.response_len),
            "ref_chosen": 0.0, "ref_rejected": 0.0, "ref_gen": 0.0} for _ in range(n_train)]
    gen = [ids(args.gen_prompt_len) for _ in range(args.gen_prompts)]
    # Scoring: chats of varied lengths (prompts up to prompt_len / 2, answers up to 2 x response_len).
    score = [(text(max(1, args.prompt_len // 2)), text(2 * args.response_len)) for _ in range(args.score_rows)]
    return {"sft": sft, "dpo": dpo, "gen": gen, "score": score}


N_SPECIAL = 3  # <|endoftext|> (pad, id 0), <|im_start|>, <|im_end|> (EOS)


def build_tokenizer(vocab_size: int):
    """A Qwen2 (byte-level BPE) tokenizer with a ChatML template and ``vocab_size`` tokens: the
    special tokens, the 256 byte symbols, then fillers, and no merges, so text is one token per
    byte. transformers 5 loads a tokenizer saved beside a ``qwen2`` config as Qwen2Tokenizer
    whatever tokenizer.json holds (a word-level one comes back empty), so it must be one."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    from dppo.data.tiny_model import CHATML_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = [*specials, *sorted(ByteLevel.alphabet())]
    symbols += [f"<filler_{i}>" for i in range(vocab_size - len(symbols))]
    tokenizer = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(symbols)}, merges=[], unk_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_models(args, workdir: Path, device: str) -> dict:
    """The policy (Qwen2ForCausalLM) and the seqcls reward model (Qwen2ForSequenceClassification),
    random weights, saved with save_pretrained (safetensors) beside a ChatML word-level tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from dppo.infer.rewards import chat_token_ids

    shape = TINY if args.dry_run else QWEN_05B
    tokenizer = build_tokenizer(shape["vocab_size"])
    assert len(tokenizer) == shape["vocab_size"], len(tokenizer)
    dtype = torch.float32 if args.dry_run else torch.bfloat16  # Qwen2.5-0.5B ships bfloat16 weights
    common = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    dirs = {}
    for name, cls, extra in (("policy", Qwen2ForCausalLM, {}), ("seqcls", Qwen2ForSequenceClassification, {"num_labels": 1})):
        torch.manual_seed(0)
        with torch.device(device):
            model = cls(Qwen2Config(**shape, **common, **extra))
        if name == "policy":
            # The pad id (0) is token 0, the nemotron reward token; its embedding row starts at zero,
            # which with tied embeddings would make every nemotron reward exactly 0.
            with torch.no_grad():
                model.get_input_embeddings().weight[tokenizer.pad_token_id].normal_(0.0, 0.02)
            model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                       pad_token_id=tokenizer.pad_token_id, do_sample=False)
        out = workdir / name
        model.to(dtype).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        dirs[name] = str(out)
        del model
    expected = chat_token_ids(tokenizer, *TOKENIZER_PROBE, None)[0]
    # 4 special tokens, 4 newlines, one token per letter of "user", "abc", "assistant", "xyz"
    assert len(expected) == 27, tokenizer.convert_ids_to_tokens(expected)
    models = {"dirs": dirs, "shape": shape, "numbers": shape_numbers(shape), "probe_ids": expected}
    check_tokenizer(models)
    return models


TOKENIZER_PROBE = (["abc"], ["xyz"])


def check_tokenizer(models: dict) -> None:
    """The scoring rows tokenize text: the saved tokenizer, as this environment's transformers
    loads it, must give the ids the built one gave."""
    from dppo.infer.rewards import chat_token_ids
    from dppo.runtime.io import load_tokenizer

    for name, path in models["dirs"].items():
        got = chat_token_ids(load_tokenizer(path), *TOKENIZER_PROBE, None)[0]
        if got != models["probe_ids"]:
            raise RuntimeError(f"{path}: the saved tokenizer does not round-trip here: {got} != {models['probe_ids']}")


# ----------------------------------------------------------------------------- timing helpers


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_note() -> str:
    import torch

    if not torch.cuda.is_available():
        return ""
    return f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


class TimedTask:
    """Wraps a :class:`dppo.train.loop.Task`: the clock at the start of every loss (one micro batch
    per step here) and after every step's metrics (the trainer calls them after the optimizer step)."""

    def __init__(self, task):
        self.task, self.starts, self.ends, self.batches = task, [], [], []

    def loss(self, model, rows):
        synchronize()
        self.starts.append(time.perf_counter())
        self.batches.append(list(rows))
        return self.task.loss(model, rows)

    def weight(self, rows):
        return self.task.weight(rows)

    def lengths(self):
        return self.task.lengths()

    def step_metrics(self, model, step, total):
        out = self.task.step_metrics(model, step, total)
        synchronize()
        self.ends.append(time.perf_counter())
        return out


class ThroughputLog(logging.Handler):
    """Catches :mod:`dppo.infer.generation`'s "<backend>: N prompts, T new tokens in S s" record, whose
    time excludes the model load."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.args = None

    def emit(self, record):
        if "new tokens in" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) >= 4:
            self.args = record.args


# ----------------------------------------------------------------------------- rows


def run_training(kind: str, args, models: dict, data: dict, workdir: Path, peak: float | None) -> dict:
    import torch

    from dppo.runtime.io import load_causal_lm, load_tokenizer, pad_token_id
    from dppo.settings import Experiment, LossSettings, OptimSettings
    from dppo.train.logprobs import can_share_prompt
    from dppo.train.loop import train

    policy = models["dirs"]["policy"]
    tokenizer = load_tokenizer(policy)
    model = load_causal_lm(policy)  # the pipeline's loader: the checkpoint's dtype (bfloat16 on the GPU run)
    dtype = str(model.dtype).removeprefix("torch.")
    attn = args.attn
    if attn == "auto":
        import importlib.util

        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"
    if attn != model.config._attn_implementation:
        model.set_attn_implementation(attn)
    steps = args.warmup + args.steps
    opt = OptimSettings(lr=1e-5, batch_size=args.batch_size, max_steps=steps, warmup_ratio=0.0, save_steps=10**9,
                        bf16=True, seed=0)
    pad = pad_token_id(tokenizer)
    rows = data[kind]
    if kind == "sft":
        from dppo.train.sft import SFTTask

        task = TimedTask(SFTTask(rows, pad))
        record = {"stage": "gpu_check_sft"}
    else:
        from dppo.train.preference import PreferenceTask

        experiment = Experiment(name="gpu_check_dpo", loss=LossSettings(name="dpo"), optim=opt, track_gen=False,
                                probe_rows=0)
        task = TimedTask(PreferenceTask(experiment, rows, pad, []))
        record = {"stage": "preference", "experiment": "gpu_check_dpo", "seed": 0}
    free_memory()
    train(model, tokenizer, rows, task, opt, workdir / f"ckpt-{kind}", record)
    if len(task.starts) != steps or len(task.ends) != steps:
        raise RuntimeError(f"expected {steps} timed steps, saw {len(task.starts)} losses and {len(task.ends)} ends")
    timed = task.batches[args.warmup:]
    seconds = task.ends[-1] - task.starts[args.warmup]
    numbers = models["numbers"]
    if kind == "sft":
        work = [sft_work(b) for b in timed]
        tokens = sum(len(r["prompt_ids"]) + len(r["response_ids"]) for b in timed for r in b)
        shared = False
    else:
        shared = can_share_prompt(model, [r["prompt_ids"] for r in rows], [[r["chosen_ids"], r["rejected_ids"]] for r in rows])
        work = [dpo_work(b, shared) for b in timed]
        tokens = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for b in timed for r in b)
    total_flops = sum(flops(numbers, *w, train=True) for w in work)
    note = [f"{dtype} weights", "bf16 autocast" if torch.cuda.is_available() else "fp32 (CPU)", attn,
            f"{args.batch_size} rows/step", f"{args.steps} timed + {args.warmup} warm-up steps"]
    if kind == "dpo":
        note.append("shared-prompt forward" if shared else "concatenated forward")
    note.append(peak_note())
    del model
    free_memory()
    return result(kind, "transformers", seconds, tokens=tokens, rows=sum(len(b) for b in timed), flops=total_flops,
                  peak=peak, note=note,
                  workload=f"{args.batch_size} x ({args.prompt_len} prompt + {'2 x ' if kind == 'dpo' else ''}{args.response_len} response) tokens")


def run_generation(engine: str, args, models: dict, data: dict, on_gpu: bool) -> dict:
    from dppo.infer.generation import generate_greedy
    from dppo.settings import GenerationSettings

    options = {}
    if engine == "vllm" and on_gpu:
        options = {"gpu_memory_utilization": args.vllm_gpu_memory_utilization}
    settings = GenerationSettings(engine=engine, vllm_python=sys.executable, batch_size=args.gen_batch_size,
                                  dtype="auto", vllm_options=options)
    handler = ThroughputLog()
    logger = logging.getLogger("dppo.infer.generation")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        out = generate_greedy(models["dirs"]["policy"], data["gen"], args.gen_new_tokens, settings)
    finally:
        logger.removeHandler(handler)
    wall = time.perf_counter() - start
    new_tokens = sum(len(x) for x in out)
    note = [f"batch {args.gen_batch_size}", "dtype auto"]
    if handler.args is not None:
        seconds = float(handler.args[3])
        note.append(f"model load excluded (wall incl. load {wall:.1f} s)")
    else:
        seconds = wall
        note.append("wall time INCLUDING the model load (no throughput log record seen)")
    note.append(peak_note())
    free_memory()
    return result("generate", engine, seconds, tokens=new_tokens, rows=len(out), note=note,
                  workload=f"{len(out)} prompts x {args.gen_prompt_len} tokens, {args.gen_new_tokens} new tokens greedy")


def run_scoring(backend: str, engine: str, args, models: dict, data: dict, on_gpu: bool, peak: float | None,
                workdir: Path) -> dict:
    from dppo.infer.rewards import chat_token_ids, reward_backend
    from dppo.settings import RewardSettings

    model_dir = models["dirs"]["policy" if backend == "nemotron" else "seqcls"]
    prompts = [p for p, _ in data["score"]]
    responses = [r for _, r in data["score"]]
    options = {"gpu_memory_utilization": args.vllm_gpu_memory_utilization} if engine == "vllm" else {}
    settings = RewardSettings(backend=backend, model=model_dir, engine=engine, batch_size=args.score_batch_size,
                              dtype="auto", vllm_python=sys.executable, vllm_options=options)
    start = time.perf_counter()
    scorer = reward_backend(settings)
    loaded = time.perf_counter()
    scorer.score(prompts[:8], responses[:8])  # warm-up (kernels, allocator)
    synchronize()
    begin = time.perf_counter()
    rewards = scorer.score(prompts, responses)
    synchronize()
    seconds = time.perf_counter() - begin
    ids = chat_token_ids(scorer.tokenizer, prompts, responses, None)
    tokens = sum(len(x) for x in ids)
    numbers = dict(models["numbers"])
    head_tokens = len(ids)  # nemotron: the head at the last position only; seqcls: a 1-label head
    if backend == "seqcls":
        numbers["n_head"] = models["shape"]["hidden_size"]
    total_flops = flops(numbers, tokens, head_tokens, sum(causal_pairs(len(x)) for x in ids), train=False)
    (workdir / f"rewards-{backend}-{engine}.json").write_text(json.dumps(rewards))
    note = [f"engine start {loaded - start:.1f} s (excluded)", f"batch {args.score_batch_size}" if engine == "transformers"
            else "vLLM schedules its own batches", peak_note() if engine == "transformers" else ""]
    del scorer
    free_memory()
    return result(f"score {backend}", engine, seconds, tokens=tokens, rows=len(rewards), flops=total_flops, peak=peak,
                  note=note, workload=f"{len(rewards)} chats, {tokens} tokens (lengths varied)")


def result(name, engine, seconds, *, tokens=None, rows=None, flops=None, peak=None, note=(), workload="") -> dict:
    out = {"row": name, "engine": engine, "workload": workload, "seconds": seconds, "tokens": tokens, "rows": rows,
           "tokens_per_s": tokens / seconds if tokens else None, "rows_per_s": rows / seconds if rows else None,
           "tflops": flops / seconds / 1e12 if flops else None, "note": "; ".join(n for n in note if n)}
    out["mfu"] = out["tflops"] / peak if (peak and out["tflops"]) else None
    return out


# ----------------------------------------------------------------------------- workers


def device_peak(args) -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", args.peak_tflops
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return name, args.peak_tflops
    return name, next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def worker(args) -> int:
    """One environment's rows; each result is appended to results.jsonl as soon as it exists."""
    workdir = Path(args.workdir)
    results = workdir / "results.jsonl"
    deadline = args.deadline

    def emit(row: dict) -> None:
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rate = f"{row['tokens_per_s']:.0f} tokens/s" if row.get("tokens_per_s") else ""
        say(f"{row['row']} ({row['engine']}): {row.get('error') or rate} {row.get('note', '')}")

    def attempt(name, engine, fn, need_s: float):
        left = deadline - time.time()
        if left < need_s:
            emit({"row": name, "engine": engine, "error": f"skipped: {left:.0f} s of the time budget left, needs ~{need_s:.0f} s"})
            return
        say(f"{name} ({engine}) ...")
        try:
            emit(fn())
        except Exception as err:  # one row's failure must not hide the others
            import traceback

            traceback.print_exc()
            emit({"row": name, "engine": engine, "error": f"error: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"})
            free_memory()

    import torch

    on_gpu = torch.cuda.is_available()
    if not args.dry_run and not on_gpu:
        say(f"no CUDA device visible to {sys.executable} (torch {torch.__version__}); this check needs a GPU")
        return 2
    name, peak = device_peak(args)
    if args.worker == "main":
        start = time.perf_counter()
        models = build_models(args, workdir, "cuda" if on_gpu else "cpu")
        data = make_data(args, models["shape"]["vocab_size"])
        (workdir / "models.json").write_text(json.dumps(models))
        (workdir / "data.json").write_text(json.dumps(data))
        info = {"device": name, "peak_tflops": peak, "torch": torch.__version__, "python": sys.executable}
        import transformers

        info["transformers"] = transformers.__version__
        (workdir / "main_env.json").write_text(json.dumps(info))
        say(f"models built in {time.perf_counter() - start:.1f} s on {name}")
        need = 5 if args.dry_run else 40
        for kind in ("sft", "dpo"):
            attempt(kind, "transformers", lambda kind=kind: run_training(kind, args, models, data, workdir, peak), need)
        attempt("generate", "transformers", lambda: run_generation("transformers", args, models, data, on_gpu), need)
        for backend in ("seqcls", "nemotron"):
            attempt(f"score {backend}", "transformers",
                    lambda b=backend: run_scoring(b, "transformers", args, models, data, on_gpu, peak, workdir), need)
    else:
        import vllm

        (workdir / "vllm_env.json").write_text(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__,
                                                           "python": sys.executable}))
        models = json.loads((workdir / "models.json").read_text())
        data = json.loads((workdir / "data.json").read_text())
        check_tokenizer(models)
        need = 10 if args.dry_run else 75  # engine start (torch.compile, CUDA graphs) included
        attempt("generate", "vllm", lambda: run_generation("vllm", args, models, data, on_gpu), need)
        for backend in ("seqcls", "nemotron"):
            attempt(f"score {backend}", "vllm",
                    lambda b=backend: run_scoring(b, "vllm", args, models, data, on_gpu, peak, workdir), need)
    return 0


# ----------------------------------------------------------------------------- orchestration


def run_worker(kind: str, python: str, args, workdir: Path, deadline: float, env: dict) -> str | None:
    """Run one worker (its own process group), echo its [gpu_check] lines, keep the rest in a log.
    Returns None, or why it failed."""
    command = [python, str(Path(__file__).resolve()), "--worker", kind, "--workdir", str(workdir),
               "--deadline", str(deadline), *args.passthrough]
    log_path = workdir / f"{kind}.log"
    limit = max(5.0, deadline - time.time() + 15)  # the worker skips rows itself; this is the backstop
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=workdir, start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith("[gpu_check]"):
                    print(line.rstrip(), file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, SystemExit) as err:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            return f"{kind} worker killed after {limit:.0f} s (time budget); log: {log_path}"
        finally:
            reader.join(timeout=5)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        print(f"--- last lines of {log_path} ---\n{tail}", file=sys.stderr)
        return f"{kind} worker exited with {proc.returncode}; log: {log_path}"
    return None


def vllm_problem(python: str) -> str | None:
    if not Path(python).exists():
        return f"no vLLM environment at {python}: {VLLM_BUILD_HINT}"
    done = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, cwd="/")
    if done.returncode:
        return f"{python} cannot import vllm ({done.stderr.strip().splitlines()[-1:]}): {VLLM_BUILD_HINT}"
    return None


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def reward_agreement(workdir: Path, backend: str) -> str:
    """How far the vLLM engine's rewards are from the transformers engine's on the same chats."""
    try:
        hf, vl = (json.loads((workdir / f"rewards-{backend}-{e}.json").read_text()) for e in ("transformers", "vllm"))
    except OSError:
        return ""
    import statistics

    diff = max(abs(a - b) for a, b in zip(hf, vl))
    return f"max |vllm - transformers| reward {diff:.2g} (reward sd {statistics.pstdev(hf):.2g})"


def print_table(workdir: Path, args, problems: dict, wall: float) -> None:
    rows = {}
    path = workdir / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[row["row"], row["engine"]] = row
    env = json.loads((workdir / "main_env.json").read_text()) if (workdir / "main_env.json").exists() else {}
    venv = json.loads((workdir / "vllm_env.json").read_text()) if (workdir / "vllm_env.json").exists() else {}
    shape = json.loads((workdir / "models.json").read_text())["shape"] if (workdir / "models.json").exists() else {}
    numbers = shape_numbers(shape) if shape else {}
    print()
    print(f"# gpu_check{' --dry-run (tiny model, CPU)' if args.dry_run else ''}: device {env.get('device', '?')}, "
          f"peak bf16 {fmt(env.get('peak_tflops'), '.1f')} TFLOP/s; torch {env.get('torch', '?')}, "
          f"transformers {env.get('transformers', '?')}; vLLM env: vllm {venv.get('vllm', '-')}, torch {venv.get('torch', '-')}")
    if shape:
        print(f"# model: Qwen2 hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
              f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV heads, intermediate "
              f"{shape['intermediate_size']}, vocab {shape['vocab_size']}, tied embeddings; random weights; "
              f"N_body {numbers['n_body'] / 1e6:.1f}M, N_head {numbers['n_head'] / 1e6:.1f}M")
    header = ["row", "engine", "workload", "time s", "tokens/s", "rows/s", "TFLOP/s", "MFU", "notes"]
    table = []
    for name, engine in ROW_ORDER:
        row = rows.get((name, engine))
        if row is None:
            why = problems.get(engine) or problems.get("main") or "not run"
            table.append([name, engine, "", "-", "-", "-", "-", "-", why])
        elif row.get("error"):
            table.append([name, engine, "", "-", "-", "-", "-", "-", row["error"]])
        else:
            if name.startswith("score ") and engine == "vllm":
                row["note"] = "; ".join(filter(None, [row["note"], reward_agreement(workdir, name.split()[1])]))
            table.append([name, engine, row["workload"], fmt(row["seconds"], ".2f"), fmt(row["tokens_per_s"], ",.0f"),
                          fmt(row["rows_per_s"], ",.1f"), fmt(row["tflops"], ".2g" if args.dry_run else ".1f"),
                          f"{100 * row['mfu']:.1f}%" if row["mfu"] else "-",
                          row["note"]])
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header) - 1)]
    line = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " | " + str(r[-1])  # noqa: E731
    print(line(header))
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 5)
    for r in table:
        print(line(r))
    print("# training tokens = prompt + response tokens of the timed rows (DPO: prompt + y_w + y_l); "
          "generation tokens = new tokens; scoring tokens = chat-template tokens")
    print("# FLOPs: train 6*N_body*T + 6*N_head*T_head + 12*L*d_q*A; forward-only scoring 2*N_body*T + 2*N_head*T_head "
          "+ 4*L*d_q*A (T: token positions run, T_head: positions the LM head runs at, A: causal (query, key) "
          "pairs); MFU = FLOPs / time / peak dense bf16 (H100 SXM / H200 989.4 TFLOP/s)")
    print(f"# wall time {wall:.0f} s; work directory {workdir}{'' if args.keep else ' (removed)'}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: exercise every code path (< 1 min)")
    for key, (full, dry) in SIZES.items():
        kind = float if key == "budget_s" else int
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, help=f"default {full} ({dry} with --dry-run)")
    p.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2", "eager"],
                   help="training attention (auto: flash_attention_2 when flash_attn is installed, else sdpa)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    p.add_argument("--vllm-python", default=os.environ.get("DPPO_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python")))
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3,
                   help="per vLLM engine (three start one after the other; a finished one may not have let go yet)")
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory (models, logs, results)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--worker", choices=["main", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, (full, dry) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, dry if args.dry_run else full)
    # what the workers get: every setting, explicitly
    args.passthrough = [*(["--dry-run"] if args.dry_run else []), "--attn", args.attn,
                        "--vllm-gpu-memory-utilization", str(args.vllm_gpu_memory_utilization),
                        *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])]
    for key in SIZES:
        if key != "budget_s":
            args.passthrough += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return worker(args)
    start = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` in gpu_check.sh: kill the workers too
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA GPU visible to {sys.executable} (torch {torch.__version__}). This check needs one "
                  "H100/H200 and a CUDA build of torch; `--dry-run` runs its code paths on the CPU.", file=sys.stderr)
            return 2
    deadline = start + args.budget_s
    workdir = Path(tempfile.mkdtemp(prefix="dppo-gpu-check-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.dry_run:
        # vLLM's CPU engine in the worker's own process: no engine and worker processes to spawn.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    problems: dict[str, str] = {}
    say(f"work directory {workdir}; time budget {args.budget_s:.0f} s")
    try:
        vllm_skip = "skipped (--skip-vllm)" if args.skip_vllm else vllm_problem(args.vllm_python)
        # the main rows get the time the vLLM rows do not need
        main_deadline = deadline - (0 if vllm_skip else (45 if args.dry_run else 240))
        problem = run_worker("main", sys.executable, args, workdir, main_deadline, env)
        if problem:
            problems["main"] = problems["transformers"] = problem
        if vllm_skip:
            problems["vllm"] = vllm_skip
        elif not (workdir / "models.json").exists():
            problems["vllm"] = "not run: the main worker built no models"
        else:
            problem = run_worker("vllm", args.vllm_python, args, workdir, deadline, env)
            if problem:
                problems["vllm"] = problem
        print_table(workdir, args, problems, time.time() - start)
        if args.json:
            path = workdir / "results.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            args.json.write_text(json.dumps({"rows": rows, "problems": problems}, indent=1))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    failed = {k: v for k, v in problems.items() if not v.startswith("skipped (--skip-vllm)")}
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
