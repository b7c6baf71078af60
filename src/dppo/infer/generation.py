"""Greedy generation with two interchangeable engines: ``transformers`` and ``vllm``.

Used by the stages ``pregenerate`` (y_gen = the reference model's greedy answer to every
preference prompt) and ``generate_eval`` (every model answers the held-out prompts).

Prompts arrive already tokenized (chat template applied with the generation prompt). Each
result is the generated ids WITHOUT the prompt, INCLUDING the EOS token when one was
generated, with nothing after it. Greedy means argmax at every step: the model's own
``generation_config`` sampling knobs (temperature, top_p, repetition_penalty, ...) are
ignored; only its EOS and pad ids are used.

vLLM pins its own torch and transformers, so it lives in a separate virtual environment
(``.ci/vllm_env.sh`` builds ``.venv-vllm``). With ``engine: vllm`` the prompts go to the
interpreter ``vllm_python`` through :mod:`dppo.infer.vllm_engine` (the route reward scoring
takes too), which runs :func:`generate_in_vllm` there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from dppo.infer import vllm_engine
from dppo.runtime.io import load_causal_lm
from dppo.settings import DTYPES, GenerationSettings
from dppo.train.batching import pad_sequences

log = logging.getLogger(__name__)

PROMPT_COLUMN = "prompt_ids"
GENERATED_COLUMN = "generated_ids"


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


def _generate_vllm(
    model_dir: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    settings: GenerationSettings,
    trust_remote_code: bool,
) -> list[list[int]]:
    """vLLM in this interpreter (the vLLM environment's)."""
    import torch

    vllm = vllm_engine.import_vllm()
    eos_ids, _ = special_token_ids(model_dir)
    dtype = resolve_dtype(settings.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    llm = vllm_engine.start_engine(model_dir, dtype, trust_remote_code,
                                   {"max_num_seqs": settings.batch_size, **settings.vllm_options})
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


def generate_in_vllm(table: pd.DataFrame, model_dir: str, max_new_tokens: int, settings: dict, trust_remote_code: bool):
    """The vLLM side of the route (:func:`dppo.infer.vllm_engine.call`): ``table``'s prompts,
    plus the generated ids."""
    prompts = [[int(t) for t in ids] for ids in table[PROMPT_COLUMN]]
    options = GenerationSettings.from_dict(settings, "generation")
    generated = _generate_vllm(Path(model_dir), prompts, max_new_tokens, options, trust_remote_code)
    return table.assign(**{GENERATED_COLUMN: generated})


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
    there; without EOS it has exactly ``max_new_tokens`` tokens. ``settings`` names the engine
    (``transformers``: batched, left padded, CPU or CUDA; ``vllm``: in the vLLM environment
    ``settings.vllm_python``, see :mod:`dppo.infer.vllm_engine`), the batch size, dtype, device
    and extra ``vllm.LLM`` arguments.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model_dir = check_model_dir(model_dir)
    prompts = check_prompts(prompt_ids)
    if not prompts:
        return []
    s = settings or GenerationSettings()
    if s.engine == "transformers":
        return _generate_transformers(model_dir, prompts, max_new_tokens, s.batch_size, s.device, s.dtype, trust_remote_code)
    table = vllm_engine.call(
        s.vllm_python, "dppo.infer.generation:generate_in_vllm", pd.DataFrame({PROMPT_COLUMN: prompts}),
        model_dir=str(model_dir.absolute()), max_new_tokens=max_new_tokens, settings=s.to_dict(),
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    return [[int(t) for t in ids] for ids in table[GENERATED_COLUMN]]
