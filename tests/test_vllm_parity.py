"""vLLM and transformers give identical greedy token ids on the same model.

vLLM lives in its own virtual environment (``bash .ci/vllm_env.sh`` builds ``.venv-vllm``), so
the vLLM side runs under that interpreter through :mod:`dppo.infer.vllm_engine`, exactly as the
pipeline calls it. About 30 s, mostly vLLM's engine start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_generation import DECISIVE_SPEC, argmax_loop, chat_prompts, train_briefly
from transformers import AutoModelForCausalLM

from dppo.data import synthetic
from dppo.data.tiny_model import save_tiny_model
from dppo.infer.generation import generate_greedy, special_token_ids
from dppo.settings import GenerationSettings

VLLM_PYTHON = Path(os.environ.get("DPPO_VLLM_PYTHON", Path(__file__).parents[1] / ".venv-vllm" / "bin" / "python"))
MAX_NEW_TOKENS = 8

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM environment at {VLLM_PYTHON}: build it with `bash .ci/vllm_env.sh` "
    "(or point DPPO_VLLM_PYTHON at one)",
)


def test_vllm_and_transformers_greedy_ids_are_identical(tmp_path):
    model_dir = train_briefly(save_tiny_model(tmp_path / "model", synthetic.vocabulary(), DECISIVE_SPEC))
    # Identity across two sets of fp32 kernels is only expected where the argmax is not a
    # near-tie (top-two logit gap <= 1e-3, which depends on the machine's kernels): compare on
    # the prompts free of one, so that a failure below means a real difference.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos_ids, _ = special_token_ids(model_dir)
    prompts = [p for p in chat_prompts(model_dir, 64, seed=2) if argmax_loop(model, eos_ids, p, MAX_NEW_TOKENS)[1] > 1e-3]
    assert len(prompts) >= 40, f"only {len(prompts)} of 64 prompts are free of near-ties"

    expected = generate_greedy(model_dir, prompts, MAX_NEW_TOKENS, GenerationSettings(batch_size=16))
    got = generate_greedy(
        model_dir, prompts, MAX_NEW_TOKENS, GenerationSettings(engine="vllm", batch_size=16, vllm_python=str(VLLM_PYTHON))
    )
    assert got == expected
    # Both EOS-ended and max-length answers were compared.
    assert 0 < sum(ids[-1] in eos_ids for ids in expected) < len(expected)
