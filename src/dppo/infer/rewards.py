"""Reward backends behind one interface: ``reward_backend(settings).score(prompts, responses)``.

- ``programmatic``: the embedded synthetic task's ground truth (:func:`dppo.data.synthetic.reward`).
- ``seqcls``: any ``AutoModelForSequenceClassification`` reward model with ``num_labels=1``;
  the reward is its logit for the (user prompt, assistant response) chat.
- ``nemotron``: ``nvidia/Llama-3.1-Nemotron-70B-Reward-HF`` style, a causal LM whose reward is
  the logit of token id 0 at the first generated position.

Both model backends render the conversation with the reward model's OWN chat template, and
run either with transformers (``engine: transformers``, CPU or GPU) or with vLLM (``engine: vllm``,
tensor parallel on GPUs), which runs in the vLLM environment ``reward.vllm_python``: the score
job hands the answers to it through :mod:`dppo.infer.vllm_engine`, the route generation takes
too. Loading is safe: safetensors only, ``trust_remote_code`` off unless configured.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

from dppo.infer import vllm_engine
from dppo.runtime.io import (
    check_safetensors,
    load_pretrained,
    load_tokenizer,
    pad_token_id,
)
from dppo.settings import RewardSettings
from dppo.train.batching import pad_sequences

log = logging.getLogger(__name__)

# Token whose logit is the Nemotron reward (model card: ``response_token_ids['scores'][0][0][0]``).
NEMOTRON_REWARD_TOKEN_ID = 0


class RewardBackend(ABC):
    """Scores (prompt, response) pairs; ``prompt`` is the user message, ``response`` the assistant text."""

    name: str

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One float reward per pair, in input order."""


def chat(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class ProgrammaticReward(RewardBackend):
    name = "programmatic"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        _check_pairs(prompts, responses)
        # Lazy: the synthetic task is only needed by this backend.
        from dppo.data import synthetic
        return [float(synthetic.reward(p, r)) for p, r in zip(prompts, responses)]


def check_safe_checkpoint(model: str) -> None:
    """A local reward model must exist and hold safetensors weights (pickle can run code on
    load); hub ids are checked by ``from_pretrained(use_safetensors=True)`` itself."""
    path = Path(model).expanduser()
    if (path.is_absolute() or model.startswith((".", "~"))) and not path.exists():
        raise FileNotFoundError(f"reward model directory {model!r} does not exist")
    check_safetensors(path if path.exists() else model)


def chat_token_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids of each (prompt, response) chat under the tokenizer's own chat template.

    ``add_generation_prompt=False``: the chat ends with the assistant turn, as the Nemotron
    model card and sequence-classification reward models expect.
    """
    _check_pairs(prompts, responses)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the reward model's tokenizer has no chat_template; cannot build the conversation")
    ids = [
        list(tokenizer.apply_chat_template(chat(p, r), tokenize=True, add_generation_prompt=False, return_dict=False))
        for p, r in zip(prompts, responses)
    ]
    if max_length is not None:
        too_long = sum(len(x) > max_length for x in ids)
        if too_long:
            log.warning("%d of %d chats exceed max_length=%d tokens; keeping their last %d tokens",
                        too_long, len(ids), max_length, max_length)
            ids = [x[-max_length:] for x in ids]
    return ids


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"reward dtype {name!r} is not a torch dtype (e.g. float32, bfloat16) or 'auto'")
    return dtype


class _ChatModelReward(RewardBackend):
    """Tokenizes chats with the reward model's template; subclasses turn token ids into rewards."""

    def __init__(self, options: RewardSettings):
        check_safe_checkpoint(options.model)
        self.options = options
        self.tokenizer = load_tokenizer(options.model, trust_remote_code=options.trust_remote_code)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        ids = chat_token_ids(self.tokenizer, prompts, responses, self.options.max_length)
        return self._score_ids(ids) if ids else []

    @abstractmethod
    def _score_ids(self, ids: list[list[int]]) -> list[float]: ...


class _HFChatModelReward(_ChatModelReward):
    """transformers engine: length-sorted batches (little padding), results back in input order."""

    padding_side: str

    def __init__(self, options: RewardSettings):
        import torch

        super().__init__(options)
        kwargs: dict[str, Any] = dict(dtype=_torch_dtype(options.dtype))
        if options.device_map:
            kwargs["device_map"] = options.device_map
        try:
            self.model = load_pretrained(self.auto_class(), options.model, options.trust_remote_code, **kwargs)
        except OSError as err:
            raise OSError(f"cannot load reward model {options.model!r} with safetensors weights: {err}") from err
        if not options.device_map:
            device = options.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model.to(device)
        self.model.eval()
        self.pad_id = pad_token_id(self.tokenizer)
        if self.pad_id is None:
            raise ValueError(f"reward model {options.model!r}: tokenizer has neither a pad nor an eos token")

    @staticmethod
    @abstractmethod
    def auto_class(): ...

    def _pad(self, batch: list[list[int]]):
        input_ids, attention_mask = pad_sequences(batch, self.pad_id, self.padding_side)
        return input_ids.to(self.model.device), attention_mask.to(self.model.device)

    def _score_ids(self, ids: list[list[int]]) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        rewards = [0.0] * len(ids)
        size = self.options.batch_size
        starts = range(0, len(order), size)
        for start in tqdm(starts, desc=f"reward ({self.name})"):
            chunk = order[start : start + size]
            input_ids, attention_mask = self._pad([ids[i] for i in chunk])
            with torch.inference_mode():
                values = self._batch_rewards(input_ids, attention_mask).float().cpu().tolist()
            for i, value in zip(chunk, values):
                rewards[i] = float(value)
        return rewards

    @abstractmethod
    def _batch_rewards(self, input_ids, attention_mask): ...


class SeqClsReward(_HFChatModelReward):
    """Reward = the single logit of an ``AutoModelForSequenceClassification`` (num_labels=1)."""

    name = "seqcls"
    # Right padding keeps real tokens at their unpadded positions; the model pools the last
    # non-pad token itself (config.pad_token_id).
    padding_side = "right"

    def __init__(self, options: RewardSettings):
        super().__init__(options)
        labels = self.model.config.num_labels
        if labels != 1:
            raise ValueError(f"seqcls reward model {options.model!r} has num_labels={labels}; a scalar reward needs 1")
        if self.model.config.pad_token_id is None:
            # Batched pooling needs it; without it transformers refuses batches larger than one.
            self.model.config.pad_token_id = self.pad_id

    @staticmethod
    def auto_class():
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def _batch_rewards(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


class NemotronReward(_HFChatModelReward):
    """Llama-3.1-Nemotron-70B-Reward-HF: reward = logit of token id 0 at the first generated position.

    This is the model card's usage (huggingface.co/nvidia/Llama-3.1-Nemotron-70B-Reward-HF,
    README "Usage"), reproduced e.g. by public evaluation code: ``apply_chat_template(messages,
    tokenize=True, add_generation_prompt=False)``, ``model.generate(..., max_new_tokens=1,
    return_dict_in_generate=True, output_scores=True)``, ``reward =
    response_token_ids['scores'][0][0][0]``, i.e. scores[step 0][row][token id 0]. We run the
    same call on a left-padded batch and read ``scores[0][:, 0]``; ``do_sample=False`` pins the
    greedy path the card relies on (no sampling warpers alter the scores).
    """

    name = "nemotron"
    padding_side = "left"  # generate() continues after the last column

    @staticmethod
    def auto_class():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def _batch_rewards(self, input_ids, attention_mask):
        out = self.model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=1,
            return_dict_in_generate=True,
            output_scores=True,
            do_sample=False,
            pad_token_id=self.pad_id,
        )
        return out["scores"][0][:, NEMOTRON_REWARD_TOKEN_ID]


class _VLLMChatModelReward(_ChatModelReward):
    """vLLM engine (GPU, tensor parallel; or vLLM's CPU backend), in this interpreter: the score
    job reaches it in the vLLM environment through :func:`score_in_vllm`. Tokens come from the
    same chat template as the transformers engine and are passed as ``prompt_token_ids`` so both
    engines score identical inputs. Needs vllm >= 0.11.1 (``logprobs_mode``,
    ``PoolingParams.use_activation``).

    ``dtype: auto`` means the checkpoint's dtype here too, as in the transformers engine (vLLM's
    own "auto" downcasts a float32 checkpoint to float16 or bfloat16). The engine's other
    defaults are :func:`dppo.infer.vllm_engine.start_engine`'s, as for generation."""

    def __init__(self, options: RewardSettings, **protocol):
        super().__init__(options)
        self.llm = vllm_engine.start_engine(
            options.model, self._checkpoint_dtype(options), options.trust_remote_code,
            # +1: room for the one generated position after a max_length chat (nemotron).
            # The reward protocol's own options last: the config cannot turn them off.
            {"max_model_len": options.max_length + 1 if options.max_length else None,
             **options.vllm_options, **protocol},
        )  # fmt: skip

    @staticmethod
    def _checkpoint_dtype(options: RewardSettings) -> str:
        """``options.dtype``, with "auto" resolved to the checkpoint's own dtype (config.json)."""
        if options.dtype != "auto":
            return options.dtype
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(options.model, trust_remote_code=options.trust_remote_code)
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return "auto" if dtype is None else str(dtype).removeprefix("torch.")

    @staticmethod
    def _prompts(ids: list[list[int]]) -> list[dict]:
        return [{"prompt_token_ids": x} for x in ids]


class VLLMSeqClsReward(_VLLMChatModelReward):
    """``classify`` with the activation (sigmoid for one label) switched off: the raw logit,
    as ``SeqClsReward`` returns. vLLM pools the last token of the unpadded prompt."""

    name = "seqcls"

    def __init__(self, options: RewardSettings):
        super().__init__(options, runner="pooling")

    def _score_ids(self, ids: list[list[int]]) -> list[float]:
        from vllm import PoolingParams

        outputs = self.llm.classify(
            self._prompts(ids), pooling_params=PoolingParams(use_activation=False), use_tqdm=True
        )
        return [float(o.outputs.probs[0]) for o in outputs]


class VLLMNemotronReward(_VLLMChatModelReward):
    """vLLM returns log-probs, not logits, by default; the logit of token 0 cannot be recovered
    from log-probs without the full log-sum-exp. So the engine runs with
    ``logprobs_mode="raw_logits"`` (the "logprobs" it returns are then the raw logits, taken
    before any logits processor, which is what HF's greedy ``scores`` equal), and each request
    is restricted to ``allowed_token_ids=[0]`` so token 0 is the sampled token, which vLLM
    always includes in the returned logprobs. One generated token, temperature 0."""

    name = "nemotron"

    def __init__(self, options: RewardSettings):
        super().__init__(options, logprobs_mode="raw_logits")

    def _score_ids(self, ids: list[list[int]]) -> list[float]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=1, allowed_token_ids=[NEMOTRON_REWARD_TOKEN_ID], detokenize=False
        )
        outputs = self.llm.generate(self._prompts(ids), params, use_tqdm=True)
        return [float(o.outputs[0].logprobs[0][NEMOTRON_REWARD_TOKEN_ID].logprob) for o in outputs]


_MODEL_BACKENDS = {
    ("seqcls", "transformers"): SeqClsReward,
    ("seqcls", "vllm"): VLLMSeqClsReward,
    ("nemotron", "transformers"): NemotronReward,
    ("nemotron", "vllm"): VLLMNemotronReward,
}


def reward_backend(settings: RewardSettings) -> RewardBackend:
    """The backend the config's ``reward`` section names, with its options."""
    if settings.backend == "programmatic":
        return ProgrammaticReward()
    return _MODEL_BACKENDS[settings.backend, settings.engine](settings)
