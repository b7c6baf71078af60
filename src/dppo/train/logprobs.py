"""Batched response log-probs of a causal LM: all K responses of B prompts in one batched pass,
the LM head only at the positions that predict a response token, through a chunked head where
the head is linear (bounded memory at any vocabulary size).

Used by preference training (with autograd) and by the reference log-prob cache
(under ``torch.no_grad``), so both see exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dppo.train.batching import PADDING_SIDES, pad_sequences
from dppo.train.chunked_head import token_logps
from dppo.train.distributed import is_sharded, unwrapped
from dppo.train.losses import ResponseLogps


@dataclass
class ResponseBatchLogps:
    """Log-probs of K responses for each of B prompts."""

    sums: Tensor  # (B, K) summed response token log-probs, float32
    lengths: Tensor  # (B, K) number of response tokens, int64
    token_logps: Tensor | None = None  # (B, T) per-token log-probs of response k (0 on padding)
    token_mask: Tensor | None = None  # (B, T) bool, True on real tokens of response k
    token_logps_for: int | None = None  # k


def check_inputs(prompt_ids, responses, padding_side: str = "right") -> None:
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r} is not one of: {', '.join(PADDING_SIDES)}")
    if len(prompt_ids) != len(responses) or not prompt_ids:
        raise ValueError(f"need one list of responses per prompt, got {len(prompt_ids)} prompts and {len(responses)}")
    num_responses = {len(group) for group in responses}
    if len(num_responses) != 1 or 0 in num_responses:
        raise ValueError(f"every prompt needs the same number K >= 1 of responses, got {sorted(num_responses)}")
    for b, (prompt, group) in enumerate(zip(prompt_ids, responses)):
        if not prompt:
            raise ValueError(f"prompt {b} is empty: the first response token needs a prompt token to condition on")
        for k, response in enumerate(group):
            if not response:
                raise ValueError(f"response {k} of prompt {b} is empty")


def can_share_prompt(model, prompt_ids, responses) -> bool:
    """Whether the shared-prompt forward applies: several responses per prompt, every prompt
    long enough to leave a cached prefix, no activation checkpointing (a recomputed layer
    would append to the cache twice), and no FSDP2 (the cache reaches the backward pass by no
    layer's output, so no hook gathers the weights it needs again)."""
    if is_sharded(model):
        return False
    inner = unwrapped(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    return len(responses[0]) > 1 and min(len(p) for p in prompt_ids) >= 2 and not checkpointing


def _forward_concatenated(model, prompt_ids, responses, pad_token_id, padding_side, device):
    """One forward over the B*K (prompt + response) sequences, head at the scored positions.

    Returns (log-probs of the scored positions' targets, scored mask (N, L))."""
    sequences = [list(prompt) + list(response) for prompt, group in zip(prompt_ids, responses) for response in group]
    prompt_lens = [len(prompt) for prompt, group in zip(prompt_ids, responses) for _ in group]
    input_ids, attention_mask = pad_sequences(sequences, pad_token_id, padding_side)
    scored = torch.zeros(input_ids.shape, dtype=torch.bool)
    width = input_ids.shape[1]
    for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens)):
        start = width - len(seq) if padding_side == "left" else 0
        # position p predicts token p + 1: the response tokens are predicted from
        # the last prompt token up to the second-to-last response token.
        scored[row, start + prompt_len - 1 : start + len(seq) - 1] = True
    input_ids, attention_mask, scored = (t.to(device) for t in (input_ids, attention_mask, scored))
    # Left padding: positions must start at 0 on the first real token, as unpadded.
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return token_logps_at(model, inputs, scored, input_ids[:, 1:][scored[:, :-1]]), scored


@dataclass
class EncodedPrompts:
    """The KV cache of B prompts minus their last token (autograd kept), reusable by any number
    of continuation passes over any subset of the prompts."""

    key_values: list[tuple[Tensor, Tensor]]  # per layer, (B, heads, P - 1, head_dim)
    mask: Tensor  # (B, P - 1) attention mask of the prefixes
    last_tokens: list[int]  # the last prompt token, the first input of every continuation


def encode_prompts(model, prompt_ids, pad_token_id: int, padding_side: str, device) -> EncodedPrompts:
    prefix_ids, prefix_mask = pad_sequences([list(p[:-1]) for p in prompt_ids], pad_token_id, padding_side)
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    cache = model(
        input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=(prefix_mask.cumsum(dim=-1) - 1).clamp(min=0),
        use_cache=True, logits_to_keep=torch.zeros_like(prefix_mask, dtype=torch.bool),  # no head over prompts
    ).past_key_values
    key_values = [(layer.keys, layer.values) for layer in cache.layers]
    return EncodedPrompts(key_values, prefix_mask, [p[-1] for p in prompt_ids])


def _forward_continuations(
    model, encoded: EncodedPrompts, rows: list[int], responses, pad_token_id: int, padding_side: str, device
):
    """One forward of (last prompt token + response[:-1]) for the K responses of each prompt in
    ``rows``, on the prompts' cache repeated K times. Returns (log-probs of the scored positions'
    targets, scored mask)."""
    from transformers import DynamicCache

    num_per_prompt = len(responses[0])
    index = torch.tensor(rows, dtype=torch.long, device=device)
    cache = DynamicCache(
        ddp_cache_data=[
            (k.index_select(0, index).repeat_interleave(num_per_prompt, dim=0),
             v.index_select(0, index).repeat_interleave(num_per_prompt, dim=0))
            for k, v in encoded.key_values
        ],
        config=getattr(unwrapped(model), "config", None),  # sliding-window layers, if any
    )
    prefix_mask = encoded.mask.index_select(0, index).repeat_interleave(num_per_prompt, dim=0)
    continuations = [[encoded.last_tokens[b], *r[:-1]] for b, group in zip(rows, responses) for r in group]
    cont_ids, cont_mask = (t.to(device) for t in pad_sequences(continuations, pad_token_id, padding_side))
    # The continuation starts at the last prompt token, position len(prompt) - 1.
    positions = prefix_mask.sum(dim=-1, keepdim=True) + (cont_mask.cumsum(dim=-1) - 1).clamp(min=0)
    scored = cont_mask.bool()  # every real continuation position predicts one response token
    inputs = dict(input_ids=cont_ids, attention_mask=torch.cat([prefix_mask, cont_mask], dim=1), position_ids=positions,
                  past_key_values=cache, use_cache=True)
    targets = torch.tensor([token for group in responses for response in group for token in response],
                           dtype=torch.long, device=device)
    return token_logps_at(model, inputs, scored, targets), scored


class ResponseScorer:
    """Scores responses of one batch of prompts, any number of times, on any subset of them.

    With ``share_prompt`` each prompt minus its last token is encoded once into a KV cache
    (autograd kept) that every :meth:`score` call reuses: a pass then runs (last prompt token +
    response[:-1]) of its rows on the cache repeated once per response, B * (P - 1) + B*K * R
    token positions instead of B*K * (P + R). Without it every call runs one forward over the
    concatenated (prompt + response) sequences. Both give the same numbers up to float
    rounding; the autograd graph is kept (call under ``torch.no_grad`` for a reference pass).
    """

    def __init__(self, model, prompt_ids, pad_token_id: int, share_prompt: bool, padding_side: str = "right"):
        self.model = model
        self.prompt_ids = prompt_ids
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        # a DDP wrapper has no .device; the inputs go where the first weights are
        self.device = getattr(model, "device", None) or next(model.parameters()).device
        self.encoded = encode_prompts(model, prompt_ids, pad_token_id, padding_side, self.device) if share_prompt else None

    def score(self, rows: list[int], responses, token_logps_for: int | None = None) -> ResponseBatchLogps:
        """Log-probs of ``responses[i][k]`` given prompt ``rows[i]`` (optionally the per-token
        log-probs of response ``token_logps_for``)."""
        if self.encoded is None:
            prompts = [self.prompt_ids[b] for b in rows]
            token_lp, scored = _forward_concatenated(
                self.model, prompts, responses, self.pad_token_id, self.padding_side, self.device
            )
        else:
            token_lp, scored = _forward_continuations(
                self.model, self.encoded, rows, responses, self.pad_token_id, self.padding_side, self.device
            )
        return _collect(token_lp, scored, responses, token_logps_for, self.device)


def response_logps(
    model,
    prompt_ids: list[list[int]],
    responses: list[list[list[int]]],
    pad_token_id: int,
    return_token_logps_for: int | None = None,
    padding_side: str = "right",
    share_prompt: bool = True,
) -> ResponseBatchLogps:
    """Summed log-probs of ``responses[b][k]`` given ``prompt_ids[b]`` under ``model``.

    Padding is masked and position ids count real tokens only, so left and right padding give
    the same numbers as unpadded sequences. The model's head runs only at the positions that
    predict a response token (``logits_to_keep`` with a boolean mask), so neither logits nor
    log-probs are built over the vocabulary for prompt tokens. With ``share_prompt`` (and
    :func:`can_share_prompt`) each prompt is encoded once for its K responses
    (:class:`ResponseScorer`); otherwise one forward runs over the B*K concatenated sequences.
    """
    check_inputs(prompt_ids, responses, padding_side)
    num_per_prompt = len(responses[0])
    if return_token_logps_for is not None and not 0 <= return_token_logps_for < num_per_prompt:
        raise ValueError(f"return_token_logps_for={return_token_logps_for} is not a response index in [0, {num_per_prompt})")
    shared = share_prompt and can_share_prompt(model, prompt_ids, responses)
    scorer = ResponseScorer(model, prompt_ids, pad_token_id, shared, padding_side)
    return scorer.score(list(range(len(prompt_ids))), responses, return_token_logps_for)


# Config attributes that make the logits something other than hidden @ W.T + b: such a model
# gets the full-logits path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                    "output_multiplier", "dim_model_base")
# (positions, vocabulary entries) per tile of the chunked head: large on a GPU; on CPU smaller
# tiles were faster (benchmarks/logprob_memory.py).
HEAD_TILES = {"cuda": (4096, 32768), "cpu": (512, 4096)}
# Up to this many logits (64 MiB of float32) the full head is cheaper than the chunked one, whose
# tiles and recomputation only pay off when the logits would be large (a 152k vocabulary).
FULL_LOGITS_MAX = 1 << 24


def linear_head(model):
    """The LM head (weight, bias) when the logits are ``hidden @ weight.T + bias``, else None
    (also under FSDP2: outside the forward the head's weight is a shard)."""
    model = unwrapped(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not isinstance(head, torch.nn.Linear) or not hasattr(model, "get_decoder"):
        return None
    if any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    if hasattr(head.weight, "device_mesh"):  # a DTensor
        return None
    return head.weight, head.bias


def token_logps_at(model, inputs: dict, scored: Tensor, targets: Tensor) -> Tensor:
    """Log-probs of ``targets`` at the ``scored`` positions of one forward with ``inputs``, in
    float32 (float64 for a float64 model, on both heads).

    Where the head is a plain linear map (:func:`linear_head`) and the logits would be large
    (more than :data:`FULL_LOGITS_MAX`), the model runs with no head at all (``logits_to_keep``
    all False) and its last hidden states at the scored positions go through the chunked head of
    :mod:`dppo.train.chunked_head` (never more than one tile of logits, recomputed in backward: a 152k
    vocabulary costs no gigabytes); otherwise the head runs at the scored positions only
    (boolean ``logits_to_keep``) and the log-softmax is taken over those logits."""
    head = linear_head(model)
    if head is None or int(scored.sum()) * head[0].shape[0] <= FULL_LOGITS_MAX:
        logits = model(**inputs, logits_to_keep=scored).logits
        _check_head_slicing(model, logits, scored)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 models too
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    captured = {}

    def keep_hidden(module, args, output):
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = unwrapped(model).get_decoder().register_forward_hook(keep_hidden)  # the forward stays wrapped
    try:
        logits = model(**inputs, logits_to_keep=torch.zeros_like(scored)).logits
    finally:
        handle.remove()
    _check_head_slicing(model, logits, torch.zeros_like(scored))
    weight, bias = head
    token_chunk, vocab_chunk = HEAD_TILES["cuda" if weight.is_cuda else "cpu"]
    return token_logps(captured["hidden"][scored], weight, targets, bias, token_chunk, vocab_chunk)


def _check_head_slicing(model, logits: Tensor, scored: Tensor) -> None:
    num_scored = int(scored.sum())
    if logits.dim() != 2 or logits.shape[0] != num_scored:
        raise TypeError(
            f"{type(model).__name__} ignored the boolean logits_to_keep mask (logits of shape "
            f"{tuple(logits.shape)}, expected ({num_scored}, vocab)); it needs a transformers causal LM "
            "whose forward slices with `slice_logits_to_keep`"
        )


def gated_logps(scorer: ResponseScorer, responses: list[list[int]], needs_grad: list[bool],
                token_logps: bool, scored: list[bool] | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(sums (B,), per-token log-probs (B, T) or None, their mask or None) of one response per
    prompt, scored with autograd only on the rows ``needs_grad`` marks, and not at all on rows
    ``scored`` marks False (their sums and tokens are 0, their mask all False).

    The DPPO penalties weight y_gen by f(r), and r depends on y_w and y_l only: a row with a zero
    weight gives y_gen no gradient, so building its graph (forward activations and backward)
    there is wasted, and when y_gen's log-prob is not logged either its forward is too. Values
    equal one full pass's up to float rounding; float32 whatever the model's dtype."""
    device = scorer.device
    scored = scored if scored is not None else [True] * len(responses)
    width = max(len(r) for r in responses)
    sums = torch.zeros(len(responses), dtype=torch.float32, device=device)
    tokens = torch.zeros((len(responses), width), dtype=torch.float32, device=device)
    for grad in (True, False):
        rows = [b for b in range(len(responses)) if scored[b] and needs_grad[b] == grad]
        if not rows:
            continue
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            part = scorer.score(rows, [[responses[b]] for b in rows], 0 if token_logps else None)
        index = torch.tensor(rows, dtype=torch.long, device=device)
        sums = sums.index_put((index,), part.sums[:, 0].float())  # out of place: autograd flows
        if token_logps:
            padded = torch.nn.functional.pad(part.token_logps.float(), (0, width - part.token_logps.shape[1]))
            tokens = tokens.index_put((index,), padded)
    if not token_logps:
        return sums, None, None
    lengths = torch.tensor([len(r) if s else 0 for r, s in zip(responses, scored)], dtype=torch.long, device=device)
    mask = torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    return sums, tokens, mask


def _collect(token_lp, scored, responses, return_token_logps_for, device) -> ResponseBatchLogps:
    """Per-response sums (and optionally one response's per-token log-probs) from the log-probs
    of the scored positions (row-major, as boolean indexing flattens ``scored``)."""
    num_prompts, num_per_prompt = len(responses), len(responses[0])
    lengths = torch.tensor([len(r) for group in responses for r in group], dtype=torch.long, device=device)
    rows = scored.nonzero(as_tuple=True)[0]
    sums = torch.zeros(len(lengths), dtype=token_lp.dtype, device=device).index_add(0, rows, token_lp)
    result = ResponseBatchLogps(
        sums=sums.view(num_prompts, num_per_prompt), lengths=lengths.view(num_prompts, num_per_prompt)
    )
    if return_token_logps_for is not None:
        # index of each scored token within its response
        token_index = (scored.cumsum(dim=-1) - 1)[scored]
        width = int(lengths.max())
        per_token = torch.zeros((len(lengths), width), dtype=token_lp.dtype, device=device)
        per_token = per_token.index_put((rows, token_index), token_lp)
        k = result.token_logps_for = return_token_logps_for
        width_k = int(result.lengths[:, k].max())
        result.token_logps = per_token.view(num_prompts, num_per_prompt, width)[:, k, :width_k]
        positions = torch.arange(width_k, device=device)
        result.token_mask = positions.unsqueeze(0) < result.lengths[:, k].unsqueeze(1)
    return result


def as_response_logps(batch: ResponseBatchLogps) -> ResponseLogps:
    """The loss inputs of a batch whose responses are ordered (y_w, y_l) or (y_w, y_l, y_gen).

    Per-token log-probs, when present, must be those of y_gen (``return_token_logps_for=2``).
    """
    num_per_prompt = batch.sums.shape[1]
    if num_per_prompt not in (2, 3):
        raise ValueError(f"expected responses (y_w, y_l) or (y_w, y_l, y_gen), got K={num_per_prompt}")
    has_gen = num_per_prompt == 3
    if batch.token_logps is not None and batch.token_logps_for != 2:
        raise ValueError(
            f"per-token log-probs are only used for y_gen (response 2), got them for response {batch.token_logps_for}"
        )
    return ResponseLogps(
        chosen=batch.sums[:, 0],
        rejected=batch.sums[:, 1],
        chosen_len=batch.lengths[:, 0],
        rejected_len=batch.lengths[:, 1],
        gen=batch.sums[:, 2] if has_gen else None,
        gen_len=batch.lengths[:, 2] if has_gen else None,
        gen_token_logps=batch.token_logps,
        gen_token_mask=batch.token_mask,
    )
