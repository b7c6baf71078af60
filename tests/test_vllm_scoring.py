"""vLLM and transformers reward engines give the same rewards on the same model (CPU), through
the score job's own code path: :func:`dppo.infer.scoring.score_files`, which hands the answers
from this (the pipeline's) interpreter to the vLLM environment through
:mod:`dppo.infer.vllm_engine` with ``reward.engine: vllm``.

Two tiny local models (no download), each with the ChatML tokenizer of :mod:`dppo.data.tiny_model`:
a ``LlamaForCausalLM`` for ``nemotron`` (reward = raw logit of token id 0 at the first generated
position) and a ``LlamaForSequenceClassification`` with one label for ``seqcls`` (reward = that
logit). The same (prompt, response) pairs, in two generations files (one engine start scores
both), are scored by the transformers engine here and by the vLLM engine in its own environment
(``bash .ci/vllm_env.sh`` builds ``.venv-vllm``). About a minute on 2 cores, mostly vLLM's import
and engine start-up (one per backend).

Tolerance, from the computation (tests/numerics.py): the transformers engine in float64 is the
exact reward; vLLM in float32 must be within SLACK times the transformers engine's own float32
error against it (or a few roundings of the largest reward). Both float32 engines round the same
sums in other orders (vLLM's CPU attention and fused ops vs eager PyTorch), so their errors are
of one order; a wrong mode is off by far more: float16 weights (what vLLM's own dtype "auto"
picks for a float32 checkpoint) by about 5e-3, a sigmoid on the seqcls logit, log-probs instead
of logits, another token's logit or another pooled position by order 1.
"""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
from numerics import assert_as_accurate_as
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dppo.data import synthetic
from dppo.data.tiny_model import TinyModelSpec, build_nemotron_reward_model, build_tokenizer
from dppo.infer.rewards import NEMOTRON_REWARD_TOKEN_ID, chat_token_ids, reward_backend
from dppo.infer.scoring import score_files
from dppo.settings import RewardSettings

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("DPPO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
N_PAIRS = 24
# Short enough that some chats are cut to their last tokens (and vLLM's max_model_len is
# max_length + 1 for the nemotron engine): the truncation path of both engines is compared too.
NEMOTRON_MAX_LENGTH = 32

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM environment at {VLLM_PYTHON}: build it with `bash .ci/vllm_env.sh` "
    "(or point DPPO_VLLM_PYTHON at one)",
)


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
    # The builder the CPU rehearsal's reward model comes from (untied head, spread-out rewards).
    causal = build_nemotron_reward_model(tokenizer, TinyModelSpec(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
        max_position_embeddings=256, seed=0))
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


def _settings(backend: str, model_dir: Path, engine: str, dtype: str = "auto") -> RewardSettings:
    # dtype "auto" (the default): the checkpoint's float32 in both engines.
    return RewardSettings(backend=backend, model=str(model_dir), engine=engine, vllm_python=str(VLLM_PYTHON),
                          batch_size=8, dtype=dtype, max_length=NEMOTRON_MAX_LENGTH if backend == "nemotron" else None)


def _score_job(settings: RewardSettings, generations: list[Path], work: Path) -> list[float]:
    """The score job's call (workflow/scripts/score.py) on these files; their rewards in order."""
    outputs = [work / f"{settings.engine}-{settings.dtype}" / path.name for path in generations]
    assert score_files(list(zip(map(str, generations), map(str, outputs))), settings, work / "cache") == len(outputs)
    return [r for path in outputs for r in pd.read_parquet(path)["reward"].tolist()]


@pytest.fixture(scope="module")
def scores(models, tmp_path_factory) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """backend -> (transformers float64, transformers float32, vLLM float32) rewards of the same pairs."""
    work = tmp_path_factory.mktemp("vllm_scoring")
    prompts, responses = _pairs()
    table = pd.DataFrame({"seed": 0, "prompt_id": [f"p{i}" for i in range(N_PAIRS)], "prompt": prompts,
                          "response": responses})
    generations = [work / "a.parquet", work / "b.parquet"]  # two models' answers: one engine start
    table.iloc[: N_PAIRS // 2].to_parquet(generations[0])
    table.iloc[N_PAIRS // 2 :].to_parquet(generations[1])
    out = {}
    with pytest.MonkeyPatch.context() as env:
        # The engine core runs in the vLLM interpreter's process (no engine and worker processes
        # to spawn: about 15 s instead of 30-45 s per engine on 2 cores); the scoring path is the same.
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"))
        for name, path in models.items():
            out[name] = tuple(_score_job(_settings(name, path, engine, dtype), generations, work / name)
                              for engine, dtype in (("transformers", "float64"), ("transformers", "auto"),
                                                    ("vllm", "auto")))
    return out


def _check_close(name: str, exact: list[float], trusted: list[float], got: list[float]) -> None:
    assert len(got) == len(trusted) == len(exact) == N_PAIRS
    # The rewards are spread out (not all 0 or equal), so agreeing on them means something.
    assert statistics.pstdev(exact) > 0.3, exact
    errors = [abs(g - e) for g, e in zip(got, exact)]
    print(f"{name}: max |vllm - float64| = {max(errors):.2e}, "
          f"max |transformers float32 - float64| = {max(abs(t - e) for t, e in zip(trusted, exact)):.2e}")
    assert_as_accurate_as(torch.tensor(got), torch.tensor(trusted), torch.tensor(exact, dtype=torch.float64), name)


def test_seqcls_vllm_matches_transformers(scores):
    exact, trusted, got = scores["seqcls"]
    # A sigmoid (vLLM's default activation for one label) would put every reward in (0, 1).
    assert min(exact) < 0 < max(exact)
    _check_close("seqcls", exact, trusted, got)


def test_nemotron_vllm_matches_transformers(scores):
    exact, trusted, got = scores["nemotron"]
    _check_close("nemotron", exact, trusted, got)


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
