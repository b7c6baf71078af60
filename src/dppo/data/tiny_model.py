"""A tiny causal LM and a locally trained tokenizer for the embedded default.

Saved with ``save_pretrained`` so every later stage loads them with ``AutoModelForCausalLM``
and ``AutoTokenizer`` exactly as it would load ``Qwen/Qwen2.5-0.5B``: a Llama-architecture
config (or Qwen2's, the paper's family, for the CPU rehearsal of configs/paper.yaml),
safetensors weights, a fast tokenizer with a ChatML chat template (the format of Qwen and
SmolLM2) and a generation config whose EOS ends an assistant turn. Also a tiny reward model
for Nemotron's protocol (:func:`build_nemotron_reward_model`).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dppo.runtime.io import atomic_output_dir
from dppo.settings import TinyModelSpec

PAD, UNK, IM_START, IM_END = "<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END)

# ChatML, as Qwen2.5 and SmolLM2 use it (without their default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` plus the ChatML special tokens.

    The synthetic task is whitespace-separated words, so a word-level vocabulary is exact;
    newlines of the chat template are whitespace and produce no token.
    """
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


# Architectures a tiny policy can have: llama (the embedded default), qwen2 (Qwen2.5's family).
ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec, architecture: str = "llama") -> PreTrainedModel:
    import torch

    config_class, model_class = ARCHITECTURES[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def build_nemotron_reward_model(tokenizer: PreTrainedTokenizerFast, spec: TinyModelSpec,
                                initializer_range: float = 0.2) -> LlamaForCausalLM:
    """A Llama-architecture causal LM read with Nemotron's protocol (the logit of token id 0 at
    the first generated position, dppo.infer.rewards). Untied head: token 0 is the pad token
    here, whose embedding row starts at zero, so a tied head would score every answer 0. A large
    ``initializer_range`` spreads the random rewards over about [-3, 3]."""
    import torch

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        initializer_range=initializer_range, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def save_model(out_dir: str | Path, model, tokenizer) -> Path:
    """``model`` (safetensors) and ``tokenizer`` saved together, as a hub checkpoint is."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_tiny_model(out_dir: str | Path, words: list[str], spec: TinyModelSpec, architecture: str = "llama") -> Path:
    """Build the tokenizer and a randomly initialised model and save both to ``out_dir``."""
    tokenizer = build_tokenizer(words)
    return save_model(out_dir, build_model(tokenizer, spec, architecture), tokenizer)


def init_model_job(out_dir: str, words: list[str], spec: dict) -> None:
    """:func:`save_tiny_model` from plain arguments (for :func:`dppo.runtime.launch.run_rule_job`),
    written whole or not at all."""
    with atomic_output_dir(out_dir) as tmp:
        save_tiny_model(tmp, words, TinyModelSpec.from_dict(spec, "tiny_model"))
