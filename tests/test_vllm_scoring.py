"""vLLM and transformers reward engines give the same rewards on the same model (CPU, float32).

Two tiny local models (no download), each with the ChatML tokenizer of :mod:`dppo.data.tiny_model`:
a ``LlamaForCausalLM`` for ``nemotron`` (reward = raw logit of token id 0 at the first generated
position) and a ``LlamaForSequenceClassification`` with one label for ``seqcls`` (reward = that
logit). The same (prompt, response) pairs are scored by the transformers engine here and by the
vLLM engine in its own environment (``bash .ci/vllm_env.sh`` builds ``.venv-vllm``), which runs
``dppo.infer.rewards.reward_backend`` from this checkout in a subprocess, as the pipeline's scoring job
would there. One subprocess starts both vLLM engines, in its own process; about 30 s on 2 cores,
mostly vLLM's import and first engine start-up.

Tolerance: ``|vllm - transformers| <= 1e-4 + 1e-4 * |transformers|`` per reward. Both engines
run float32 on CPU but with different kernels (vLLM's CPU attention and fused ops vs eager
PyTorch/SDPA); on rewards of order 1 the largest differences seen were 4.3e-6 (seqcls) and
3.1e-6 (nemotron), so 1e-4 leaves a margin of over 20x, while a wrong mode is off by far more:
float16 weights (what vLLM's own dtype "auto" picks for a float32 checkpoint) by 5e-3, a
sigmoid on the seqcls logit, log-probs instead of logits, another token's logit or another
pooled position by order 1.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dppo.data import synthetic
from dppo.data.tiny_model import build_tokenizer
from dppo.infer.rewards import NEMOTRON_REWARD_TOKEN_ID, chat_token_ids, reward_backend
from dppo.settings import RewardSettings

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("DPPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
ATOL = RTOL = 1e-4
N_PAIRS = 24
# Short enough that some chats are cut to their last tokens (and vLLM's max_model_len is
# max_length + 1 for the nemotron engine): the truncation path of both engines is compared too.
NEMOTRON_MAX_LENGTH = 32

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM environment at {VLLM_PYTHON}: build it with `bash .ci/vllm_env.sh` "
    "(or point DPPO_VLLM_PYTHON at one)",
)

# Runs under the vLLM interpreter: every backend of the spec with ONE python start-up.
RUNNER = """
import json, sys, time
from dppo.infer.rewards import reward_backend
from dppo.settings import RewardSettings

if __name__ == "__main__":  # vLLM's worker processes re-import the main module
    spec = json.load(open(sys.argv[1]))
    out = {}
    for name, job in spec.items():
        start = time.perf_counter()
        backend = reward_backend(RewardSettings(**job["settings"]))
        loaded = time.perf_counter()
        out[name] = backend.score(job["prompts"], job["responses"])
        print(f"vllm {name}: engine start {loaded - start:.1f} s, scoring {time.perf_counter() - loaded:.1f} s",
              file=sys.stderr, flush=True)
        del backend
    json.dump(out, open(sys.argv[2], "w"))
"""


def _config(tokenizer, **extra) -> LlamaConfig:
    # Head size 32 (64 / 2), which vLLM's CPU attention supports; a large initializer range
    # spreads the random rewards over about [-3, 3], so a relative error shows.
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256, initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **extra,
    )  # fmt: skip


def _save(model, tokenizer, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reward_models")
    tokenizer = build_tokenizer(synthetic.vocabulary())
    torch.manual_seed(0)
    # Untied head: token 0 is the pad token here, and the embedding row of the pad id is
    # initialised to zero, so a tied head would give every row a reward of exactly 0.
    causal = LlamaForCausalLM(_config(tokenizer, tie_word_embeddings=False))
    torch.manual_seed(1)
    seqcls = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    return {"nemotron": _save(causal, tokenizer, root / "nemotron"), "seqcls": _save(seqcls, tokenizer, root / "seqcls")}


def _pairs() -> tuple[list[str], list[str]]:
    words = synthetic.vocabulary()
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(N_PAIRS)]
    responses = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(N_PAIRS)]
    responses[0] = ""  # an empty answer is scored too
    return prompts, responses


def _settings(backend: str, model_dir: Path, engine: str) -> RewardSettings:
    # dtype "auto" (the default): the checkpoint's float32 in both engines.
    return RewardSettings(backend=backend, model=str(model_dir), engine=engine, batch_size=8,
                          max_length=NEMOTRON_MAX_LENGTH if backend == "nemotron" else None)


@pytest.fixture(scope="module")
def scores(models, tmp_path_factory) -> dict[str, tuple[list[float], list[float]]]:
    """backend -> (transformers rewards, vLLM rewards) of the same pairs."""
    work = tmp_path_factory.mktemp("vllm_scoring")
    prompts, responses = _pairs()
    expected = {name: reward_backend(_settings(name, path, "transformers")).score(prompts, responses)
                for name, path in models.items()}
    spec = {name: {"settings": _settings(name, path, "vllm").to_dict(), "prompts": prompts, "responses": responses}
            for name, path in models.items()}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "runner.py").write_text(RUNNER)
    # This checkout's dppo, whichever one the vLLM environment was built from. The engine core
    # runs in the runner's process (no engine and worker processes to spawn per engine: about
    # 15 s instead of 30-45 s per engine on 2 cores); the scoring code path is the same.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    done = subprocess.run(
        [str(VLLM_PYTHON), str(work / "runner.py"), str(work / "spec.json"), str(work / "out.json")],
        cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("vllm ")))
    assert done.returncode == 0, f"vLLM scoring failed (exit {done.returncode}):\n{done.stderr[-6000:]}"
    got = json.loads((work / "out.json").read_text())
    return {name: (expected[name], got[name]) for name in models}


def _check_close(name: str, expected: list[float], got: list[float]) -> None:
    assert len(got) == len(expected) == N_PAIRS
    # The rewards are spread out (not all 0 or equal), so agreeing on them means something.
    assert statistics.pstdev(expected) > 0.3, expected
    diffs = [abs(g - e) for g, e in zip(got, expected)]
    worst = max(range(N_PAIRS), key=lambda i: diffs[i] / (ATOL + RTOL * abs(expected[i])))
    print(f"{name}: max |vllm - transformers| = {max(diffs):.2e}; "
          f"worst row {worst}: {got[worst]!r} vs {expected[worst]!r}")
    assert got == pytest.approx(expected, rel=RTOL, abs=ATOL), f"{name}: max abs diff {max(diffs):.3e}"


def test_seqcls_vllm_matches_transformers(scores):
    expected, got = scores["seqcls"]
    # A sigmoid (vLLM's default activation for one label) would put every reward in (0, 1).
    assert min(expected) < 0 < max(expected)
    _check_close("seqcls", expected, got)


def test_nemotron_vllm_matches_transformers(scores, models):
    expected, got = scores["nemotron"]
    _check_close("nemotron", expected, got)


def test_nemotron_premise_token_zero_is_often_not_the_argmax(models):
    """The vLLM engine must return token 0's logit even where another token is the argmax
    (``allowed_token_ids=[0]``); check that these rows exist, so the comparison covers them,
    and that the transformers engine reads token 0's raw logit at the last chat position."""
    settings = _settings("nemotron", models["nemotron"], "transformers")
    backend = reward_backend(settings)
    prompts, responses = _pairs()
    ids = chat_token_ids(backend.tokenizer, prompts, responses, settings.max_length)
    assert any(len(x) == NEMOTRON_MAX_LENGTH for x in ids)  # some chats were truncated
    model = LlamaForCausalLM.from_pretrained(models["nemotron"]).eval()
    with torch.no_grad():
        last = [model(input_ids=torch.tensor([x])).logits[0, -1] for x in ids]
    assert sum(int(row.argmax()) != NEMOTRON_REWARD_TOKEN_ID for row in last) >= N_PAIRS // 2
    assert backend.score(prompts, responses) == pytest.approx(
        [float(row[NEMOTRON_REWARD_TOKEN_ID]) for row in last], rel=1e-5, abs=1e-5
    )
