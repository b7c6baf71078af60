"""Reward backends on tiny locally built models: rewards equal independent forward passes,
padding does not change them, and unsafe checkpoints are refused."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dppo.data import synthetic
from dppo.data.tiny_model import build_tokenizer
from dppo.infer.rewards import ProgrammaticReward, SeqClsReward, reward_backend
from dppo.infer.scoring import score_files, score_generations
from dppo.runtime.io import UnsafeCheckpointError
from dppo.settings import ConfigError, RewardSettings

# Different lengths so a batch needs padding.
PROMPTS = ["rsort : a b c", "unique : d", "sort : p o n m l k j i h", "unique : a b"]
RESPONSES = ["c b a", "d d d d d", "h i", ""]


def _config(tokenizer, **kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **kw,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(synthetic.vocabulary())


@pytest.fixture(scope="module")
def seqcls_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    out = tmp_path_factory.mktemp("seqcls_rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(2)
    model = LlamaForCausalLM(_config(tokenizer))
    out = tmp_path_factory.mktemp("nemotron_like_rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _independent_ids(tokenizer, prompt, response) -> torch.Tensor:
    # Render the template to text and tokenize separately: a different path from the backend's.
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False, add_generation_prompt=False,
    )
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def get_reward_backend(backend: str, **options):
    return reward_backend(RewardSettings(backend=backend, **options))


def test_bad_settings_name_the_key(seqcls_dir):
    with pytest.raises(ConfigError, match="reward.backend: 'gpt4-judge' is not one of: programmatic, seqcls, nemotron"):
        RewardSettings.from_dict({"backend": "gpt4-judge"}, "reward")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\]"):
        RewardSettings.from_dict({"backend": "seqcls", "model": str(seqcls_dir), "batchsize": 4}, "reward")
    with pytest.raises(ConfigError, match="reward.model: reward backend 'nemotron' needs a model"):
        RewardSettings.from_dict({"backend": "nemotron"}, "reward")
    with pytest.raises(ConfigError, match="reward.engine"):
        RewardSettings.from_dict({"backend": "seqcls", "model": str(seqcls_dir), "engine": "tgi"}, "reward")


def test_backend_from_config_section(seqcls_dir):
    # The embedded default's section: model options are present but null or irrelevant.
    section = {"backend": "programmatic", "model": None, "engine": "transformers", "batch_size": 64,
               "vllm_python": ".venv-vllm/bin/python"}
    assert isinstance(reward_backend(RewardSettings.from_dict(section)), ProgrammaticReward)
    backend = reward_backend(RewardSettings.from_dict({**section, "backend": "seqcls", "model": str(seqcls_dir)}))
    assert isinstance(backend, SeqClsReward)
    assert (backend.options.batch_size, backend.options.max_length) == (64, None)


def test_programmatic_matches_hand_computed_ground_truth():
    backend = get_reward_backend("programmatic")
    rewards = backend.score(
        ["rsort : a b c", "rsort : a b c", "sort : c a b", "unique : b a b"],
        ["c b a", "c a b", "a b c d", ""],
    )
    # exact: 1; one of three right: 2/3 - 1; three right + one extra: 2 - 1 - 1/3; empty: -1 - 1.
    assert rewards == pytest.approx([1.0, -1 / 3, 2 / 3, -2.0])


def test_seqcls_reward_equals_manual_score_head(seqcls_dir, tokenizer):
    model = LlamaForSequenceClassification.from_pretrained(seqcls_dir).eval()
    expected = []
    with torch.no_grad():
        for p, r in zip(PROMPTS, RESPONSES):
            hidden = model.model(_independent_ids(tokenizer, p, r)).last_hidden_state[0, -1]
            expected.append(float(hidden @ model.score.weight[0]))
    one = get_reward_backend("seqcls", model=str(seqcls_dir), batch_size=1, device="cpu")
    assert one.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)
    batched = get_reward_backend("seqcls", model=str(seqcls_dir), batch_size=4, device="cpu")
    assert batched.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)
    assert len(set(round(x, 4) for x in expected)) == len(expected)  # distinct: order is really checked


def test_nemotron_reward_is_logit_of_token_zero_at_first_generated_position(causal_dir, tokenizer):
    model = LlamaForCausalLM.from_pretrained(causal_dir).eval()
    with torch.no_grad():
        expected = [float(model(_independent_ids(tokenizer, p, r)).logits[0, -1, 0]) for p, r in zip(PROMPTS, RESPONSES)]
    one = get_reward_backend("nemotron", model=str(causal_dir), batch_size=1, device="cpu")
    assert one.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)
    # Left padding inside one batch of 3 + 1 must not move any reward.
    batched = get_reward_backend("nemotron", model=str(causal_dir), batch_size=3, device="cpu")
    assert batched.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)


def test_max_length_keeps_the_end_of_the_chat(causal_dir, tokenizer):
    backend = get_reward_backend("nemotron", model=str(causal_dir), max_length=6, device="cpu")
    ids = _independent_ids(tokenizer, PROMPTS[2], RESPONSES[2])[:, -6:]
    model = LlamaForCausalLM.from_pretrained(causal_dir).eval()
    with torch.no_grad():
        expected = float(model(ids).logits[0, -1, 0])
    assert backend.score(PROMPTS[2:3], RESPONSES[2:3]) == pytest.approx([expected], abs=1e-5)


def test_pickle_only_checkpoint_is_refused(tmp_path, seqcls_dir, tokenizer):
    model = LlamaForSequenceClassification.from_pretrained(seqcls_dir)
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"pickle weights \(pytorch_model\.bin\)"):
        get_reward_backend("seqcls", model=str(tmp_path))


def test_missing_model_directory_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_reward_backend("nemotron", model=str(tmp_path / "nope"))


def test_seqcls_refuses_multi_label_head(tmp_path, tokenizer):
    LlamaForSequenceClassification(_config(tokenizer, num_labels=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=2"):
        get_reward_backend("seqcls", model=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_says_so(causal_dir):
    with pytest.raises(ImportError, match="needs the vllm package.*bash .ci/vllm_env.sh"):
        get_reward_backend("nemotron", model=str(causal_dir), engine="vllm")


def test_score_generations_keeps_rows_and_order():
    generations = pd.DataFrame({"seed": 0, "prompt_id": ["b", "a"], "prompt": ["rsort : a b", "unique : c c"],
                                "response": ["b a", None], "extra": [1, 2]})
    scores = score_generations(generations, get_reward_backend("programmatic"))
    assert list(scores.columns) == ["seed", "prompt_id", "prompt", "response", "reward"]
    assert scores["prompt_id"].tolist() == ["b", "a"]
    assert scores["reward"].tolist() == pytest.approx([1.0, -2.0])  # a missing response scores as ""
    with pytest.raises(ValueError, match="repeats prompt_id 'b'"):
        score_generations(pd.concat([generations, generations]), get_reward_backend("programmatic"))


def test_one_scoring_pass_loads_the_reward_model_once_and_rescores_only_what_changed(tmp_path):
    loads = []

    def counting_backend(settings):
        loads.append(settings.backend)
        return reward_backend(settings)

    def generations(name, response):
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"seed": [0, 1], "prompt_id": ["a", "a"], "prompt": ["sort : b a"] * 2,
                      "response": [response, "a b"]}).to_parquet(path)
        return str(path), str(tmp_path / f"{name}.scores.parquet")

    pairs = [generations(name, "a b") for name in ("sft", "dpo", "unll")]
    settings, cache = RewardSettings(), tmp_path / "cache"
    assert score_files(pairs, settings, cache, counting_backend) == 3 and loads == ["programmatic"]
    first = {out: pd.read_parquet(out) for _, out in pairs}
    assert score_files(pairs, settings, cache, counting_backend) == 0 and len(loads) == 1  # all cached: no load
    pairs[2] = generations("unll", "b a")  # one experiment's answers change
    assert score_files(pairs, settings, cache, counting_backend) == 1 and len(loads) == 2
    assert pd.read_parquet(pairs[2][1])["reward"].tolist() == pytest.approx([-1.0, 1.0])
    for _, out in pairs[:2]:
        pd.testing.assert_frame_equal(pd.read_parquet(out), first[out])
