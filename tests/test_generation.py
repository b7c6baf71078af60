"""Greedy generation (transformers backend): argmax continuation, batching, order, EOS."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dppo.data import synthetic
from dppo.data.tiny_model import TinyModelSpec, save_tiny_model
from dppo.infer.generation import cut_after_eos, generate_greedy, length_sorted_batches, special_token_ids
from dppo.settings import FieldError, GenerationSettings
from dppo.train.batching import pad_sequences

MAX_NEW_TOKENS = 8
# head size 64 / 2 = 32: the smallest that vLLM's CPU attention supports, so the parity test
# can reuse this model.
DECISIVE_SPEC = TinyModelSpec(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128)
TASK = synthetic.TaskSpec(max_items=8)


def train_briefly(model_dir: Path, steps: int = 60, seed: int = 0) -> Path:
    """A few full-batch SFT steps on the synthetic task: a random tiny model repeats one token
    with near-tied logits; after these steps it answers in varied words, emits EOS after
    some answers and runs past max_new_tokens on others, with decisive logits."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = synthetic.sft_rows(np.random.default_rng(seed), TASK, 64)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=True)["input_ids"] for r in rows]
    batch = tokenizer.pad({"input_ids": texts}, return_tensors="pt")  # right padding
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(model_dir)
    return model_dir


def chat_prompts(model_dir: Path, n: int, seed: int) -> list[list[int]]:
    """Tokenized synthetic prompts with the generation prompt, of uneven lengths."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = np.random.default_rng(seed)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": synthetic.sample_prompt(rng, TASK)}],
            add_generation_prompt=True,
            tokenize=True,
        )["input_ids"]
        for _ in range(n)
    ]


def argmax_loop(model, eos_ids: list[int], prompt: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    """Reference greedy decoding: one full forward pass per token, no cache, no padding.
    Returns the ids and the smallest gap between the top two logits along the way."""
    ids, generated, min_gap = list(prompt), [], float("inf")
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            min_gap = min(min_gap, float(top2[0] - top2[1]))
            token = int(logits.argmax())
            ids.append(token)
            generated.append(token)
            if token in eos_ids:
                break
    return generated, min_gap


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = save_tiny_model(tmp_path_factory.mktemp("gen_model"), synthetic.vocabulary(), DECISIVE_SPEC)
    return train_briefly(out)


@pytest.fixture(scope="module")
def decisive(model_dir) -> list[tuple[list[int], list[int]]]:
    """(prompt, argmax-loop ids) for the prompts whose greedy path never meets a near-tie
    (top-two logit gap <= 1e-3): exact comparisons are only meaningful away from ties."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos_ids, _ = special_token_ids(model_dir)
    pairs, outputs = [], set()
    for prompt in chat_prompts(model_dir, 80, seed=1):
        ids, gap = argmax_loop(model, eos_ids, prompt, MAX_NEW_TOKENS)
        # distinct answers first, so that matching them all means something
        if gap > 1e-3 and (tuple(ids) not in outputs or len(pairs) % 3 == 2):
            pairs.append((prompt, ids))
            outputs.add(tuple(ids))
        if len(pairs) == 23:
            break
    assert len(pairs) >= 16, f"only {len(pairs)} of 80 prompts are free of near-ties"
    return pairs


@pytest.fixture(scope="module")
def prompts(decisive) -> list[list[int]]:
    return [prompt for prompt, _ in decisive]


@pytest.fixture(scope="module")
def reference(decisive) -> list[list[int]]:
    return [ids for _, ids in decisive]


def test_reference_outputs_are_non_trivial(model_dir, prompts, reference):
    eos = special_token_ids(model_dir)[0][0]
    ended = [r for r in reference if r[-1] == eos]
    assert 0 < len(ended) < len(reference), "need outputs both with and without EOS"
    assert len({tuple(r) for r in reference}) > len(reference) // 2
    assert len({len(p) for p in prompts}) >= 4, "prompt lengths must be uneven for padding to matter"


def test_greedy_equals_argmax_of_forward_loop(model_dir, prompts, reference):
    assert generate_greedy(model_dir, prompts, MAX_NEW_TOKENS, GenerationSettings(batch_size=7)) == reference


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_batching_and_left_padding_do_not_change_outputs(model_dir, prompts, reference, batch_size):
    assert generate_greedy(model_dir, prompts, MAX_NEW_TOKENS, GenerationSettings(batch_size=batch_size)) == reference


def test_output_order_follows_input_order(model_dir, prompts, reference):
    permutation = np.random.default_rng(3).permutation(len(prompts))
    shuffled = generate_greedy(model_dir, [prompts[i] for i in permutation], MAX_NEW_TOKENS, GenerationSettings(batch_size=5))
    assert shuffled == [reference[i] for i in permutation]


def test_eos_is_kept_once_at_the_end_and_long_answers_fill_max_new_tokens(model_dir, prompts):
    eos_ids, _ = special_token_ids(model_dir)
    outputs = generate_greedy(model_dir, prompts, MAX_NEW_TOKENS, GenerationSettings(batch_size=23))
    for ids in outputs:
        n_eos = sum(t in eos_ids for t in ids)
        if n_eos:
            assert n_eos == 1 and ids[-1] in eos_ids
        else:
            assert len(ids) == MAX_NEW_TOKENS


def test_max_new_tokens_truncates_to_a_prefix(model_dir, prompts, reference):
    short = generate_greedy(model_dir, prompts, 3, GenerationSettings(batch_size=8))
    assert all(len(s) <= 3 for s in short)
    # Greedy decoding is prefix-consistent: a shorter budget cuts the same answer.
    assert short == [r[:3] for r in reference]


def test_saved_sampling_settings_are_ignored(model_dir, prompts, reference, tmp_path):
    """Models on the hub ship sampling / repetition-penalty defaults; greedy must ignore them."""
    copy = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((copy / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.7, top_k=5, repetition_penalty=5.0, no_repeat_ngram_size=2)
    (copy / "generation_config.json").write_text(json.dumps(config))
    assert generate_greedy(copy, prompts, MAX_NEW_TOKENS) == reference


# ----------------------------------------------------------------------------- helpers


def test_cut_after_eos():
    assert cut_after_eos([5, 3, 9, 3, 0, 0], [3]) == [5, 3]
    assert cut_after_eos([5, 7, 9], [3]) == [5, 7, 9]
    assert cut_after_eos([5, 8, 3], [3, 8]) == [5, 8]
    assert cut_after_eos([3], [3]) == [3]


def test_left_pad_aligns_prompt_ends():
    input_ids, attention_mask = pad_sequences([[4, 5, 6], [7]], 0, side="left")
    assert input_ids.tolist() == [[4, 5, 6], [0, 0, 7]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_length_sorted_batches_cover_every_index_once_longest_first():
    prompts = [[1] * n for n in (3, 1, 5, 2, 5, 4, 1)]
    batches = list(length_sorted_batches(prompts, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(7))
    assert flat == [2, 4, 5, 0, 3, 1, 6]  # by length descending, ties in input order


def test_special_token_ids_prefer_generation_config(model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    im_end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert special_token_ids(model_dir) == ([im_end], pad)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"eos_token_id": [7, 9], "pad_token_id": None}))
    assert special_token_ids(bare) == ([7, 9], None)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"engine": "beam"}, "engine: 'beam' is not one of"), ({"dtype": "int8"}, "dtype"),
     ({"batch_size": 0}, "batch_size")],
)
def test_bad_settings_fail_with_a_clear_message(kwargs, message):
    with pytest.raises(FieldError, match=message):
        GenerationSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"prompt_ids": [[4, 5], []]}, ValueError, "prompt 1 is empty"),
        ({"settings": GenerationSettings(engine="vllm", vllm_python="/nonexistent/bin/python")}, FileNotFoundError,
         "vllm_python"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(model_dir, kwargs, error, message):
    arguments = {"prompt_ids": [[4, 5]], "max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=message):
        generate_greedy(model_dir, **arguments)


def test_missing_model_dir_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        generate_greedy(tmp_path / "absent", [[4, 5]], 2)


def test_vllm_missing_from_this_interpreter_says_how_to_install(model_dir):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is importable here")
    with pytest.raises(ImportError, match="vllm_env.sh"):
        generate_greedy(model_dir, [[4, 5]], 2, GenerationSettings(engine="vllm", vllm_python=sys.executable))
