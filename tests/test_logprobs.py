"""Batched response log-probs against an unbatched per-sequence loop on a real tiny Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from dppo.settings import LossSettings
from dppo.train.logprobs import ResponseBatchLogps, ResponseScorer, as_response_logps, gated_logps, response_logps
from dppo.train.losses import preference_loss

PAD = 0
# Uneven prompts (1 to 6 tokens) and responses (1 to 5 tokens), K = 3 (y_w, y_l, y_gen).
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
RESPONSES = [
    [[11, 12], [13, 14, 15, 16], [17]],
    [[18, 19, 20], [21], [22, 23, 24, 25, 26]],
    [[27, 28, 29, 30], [31, 32], [33, 34, 35]],
]


def tiny_causal_lm(architecture: str):
    torch.manual_seed(0)
    if architecture == "llama":
        config = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=50,
            pad_token_id=PAD,
        )
        return LlamaForCausalLM(config).eval()
    # GPT-2 has absolute position embeddings: unlike RoPE (relative, shift invariant),
    # wrong position ids under left padding change its numbers.
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=("llama", "gpt2"))
def model(request):
    return tiny_causal_lm(request.param)


def unbatched_token_logps(model, prompt, response) -> torch.Tensor:
    """Per-token log-probs of one unpadded sequence, from the full-vocabulary logits."""
    ids = torch.tensor([prompt + response])
    log_probs = model(input_ids=ids).logits[0].log_softmax(dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return log_probs[positions, torch.tensor(response)]


def unbatched_sums(model, prompts, responses) -> torch.Tensor:
    return torch.stack(
        [torch.stack([unbatched_token_logps(model, p, r).sum() for r in group]) for p, group in zip(prompts, responses)]
    )


@pytest.fixture(params=("full", "chunked"))
def head(request, monkeypatch):
    """Both heads of dppo.train.logprobs: the full logits (small vocabularies) and the chunked one."""
    if request.param == "chunked":
        from dppo.train import logprobs
        monkeypatch.setattr(logprobs, "FULL_LOGITS_MAX", 0)
    return request.param


@pytest.mark.parametrize("padding_side", ("left", "right"))
def test_batched_matches_per_sequence_loop(model, padding_side, head):
    with torch.no_grad():
        batched = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2, padding_side=padding_side)
        looped = unbatched_sums(model, PROMPTS, RESPONSES)
    assert batched.sums.dtype == torch.float32
    assert torch.allclose(batched.sums, looped, atol=1e-5, rtol=0)
    assert batched.lengths.tolist() == [[len(r) for r in group] for group in RESPONSES]
    # per-token y_gen log-probs, left-aligned and zero/False on padding
    assert batched.token_mask.tolist() == [[True] + [False] * 4, [True] * 5, [True] * 3 + [False] * 2]
    for b, (prompt, group) in enumerate(zip(PROMPTS, RESPONSES)):
        with torch.no_grad():
            expected = unbatched_token_logps(model, prompt, group[2])
        got = batched.token_logps[b]
        assert torch.allclose(got[: len(expected)], expected, atol=1e-5, rtol=0)
        assert not got[len(expected) :].any()
    # sanity: a real distribution, not a constant
    assert (batched.sums < 0).all() and batched.sums.std() > 0.1


def test_token_logps_of_another_response(model):
    with torch.no_grad():
        batched = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=1)
    assert batched.token_logps.shape == (3, 4) and batched.token_logps_for == 1
    with torch.no_grad():
        expected = unbatched_token_logps(model, PROMPTS[0], RESPONSES[0][1])
    assert torch.allclose(batched.token_logps[0], expected, atol=1e-5, rtol=0)


def test_half_precision_model_gives_float32_log_probs(model):
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        full = response_logps(model, PROMPTS, RESPONSES, PAD).sums
        reduced = response_logps(half, PROMPTS, RESPONSES, PAD, padding_side="left").sums
    assert reduced.dtype == torch.float32
    # bf16 weights move each token log-prob by ~1e-2 at most on this model
    assert torch.allclose(reduced, full, atol=0.1, rtol=0)


def param_grads(model, loss) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, model.parameters())
    ])


@pytest.mark.parametrize("padding_side", ("left", "right"))
def test_gradient_flows_and_matches_the_loop(model, padding_side, head):
    weights = torch.tensor([[1.0, -0.5, 0.25], [0.3, 2.0, -1.0], [-0.7, 0.1, 1.5]])
    batched = response_logps(model, PROMPTS, RESPONSES, PAD, padding_side=padding_side)
    assert batched.sums.requires_grad
    got = param_grads(model, (weights * batched.sums).sum())
    expected = param_grads(model, (weights * unbatched_sums(model, PROMPTS, RESPONSES)).sum())
    assert torch.isfinite(got).all() and got.abs().max() > 0
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_no_grad_gives_a_graph_free_result(model):
    with torch.no_grad():
        batched = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2)
    assert not batched.sums.requires_grad and not batched.token_logps.requires_grad


def test_dpo_gradient_through_the_model_matches_the_seed_formula(model):
    # grad L = -(beta/B) sum_b sigma(rhat_l - rhat_w) [grad logp(y_w) - grad logp(y_l)], rhat = beta D.
    beta = 0.5
    prompts, pairs = PROMPTS, [group[:2] for group in RESPONSES]
    with torch.no_grad():
        # a reference that differs from the policy, so the weights are not all 1/2
        reference = response_logps(model, prompts, pairs, PAD).sums + torch.tensor([[0.3, -0.2], [-1.0, 0.5], [0.0, 0.7]])
    policy = response_logps(model, prompts, pairs, PAD, padding_side="left")
    loss, _ = preference_loss(
        as_response_logps(policy), as_response_logps(ResponseBatchLogps(reference, policy.lengths)), LossSettings(beta=beta)
    )
    got = param_grads(model, loss)

    d = policy.sums.detach() - reference
    weight = torch.sigmoid(beta * (d[:, 1] - d[:, 0]))
    expected = torch.zeros_like(got)
    for b, (prompt, (y_w, y_l)) in enumerate(zip(prompts, pairs)):
        grad_w = param_grads(model, unbatched_token_logps(model, prompt, y_w).sum())
        grad_l = param_grads(model, unbatched_token_logps(model, prompt, y_l).sum())
        expected -= beta / len(prompts) * weight[b] * (grad_w - grad_l)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


def test_as_response_logps_orders_chosen_rejected_gen(model):
    with torch.no_grad():
        batched = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2)
    logps = as_response_logps(batched)
    assert torch.equal(logps.chosen, batched.sums[:, 0])
    assert torch.equal(logps.rejected, batched.sums[:, 1])
    assert torch.equal(logps.gen, batched.sums[:, 2])
    assert logps.chosen_len.tolist() == [2, 3, 4] and logps.gen_len.tolist() == [1, 5, 3]
    assert logps.gen_token_logps is batched.token_logps and logps.gen_token_mask is batched.token_mask
    # the per-token y_gen log-probs add up to y_gen's sum
    assert torch.allclose(logps.gen_token_logps.sum(-1), logps.gen, atol=1e-5)

    pairs = as_response_logps(ResponseBatchLogps(batched.sums[:, :2], batched.lengths[:, :2]))
    assert pairs.gen is None and pairs.gen_len is None


def test_as_response_logps_rejects_wrong_shapes(model):
    sums, lengths = torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="K=4"):
        as_response_logps(ResponseBatchLogps(sums, lengths))
    with pytest.raises(ValueError, match="response 1"):
        as_response_logps(ResponseBatchLogps(sums[:, :3], lengths[:, :3], torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool), 1))


@pytest.mark.parametrize(
    "prompts, responses, kwargs, message",
    [
        ([[1, 2]], [[[3], []]], {}, "response 1 of prompt 0 is empty"),
        ([[]], [[[3], [4]]], {}, "prompt 0 is empty"),
        ([[1], [2]], [[[3], [4]], [[5]]], {}, "same number K"),
        ([[1], [2]], [[[3], [4]]], {}, "one list of responses per prompt"),
        ([[1]], [[[3], [4]]], {"padding_side": "middle"}, "padding_side"),
        ([[1]], [[[3], [4]]], {"return_token_logps_for": 2}, "return_token_logps_for"),
    ],
)
def test_bad_input_is_rejected(model, prompts, responses, kwargs, message):
    with pytest.raises(ValueError, match=message):
        response_logps(model, prompts, responses, PAD, **kwargs)


def test_the_chunked_head_runs_no_vocabulary_projection_and_a_logit_transform_falls_back(model, monkeypatch):
    from dppo.train import logprobs
    prompts, responses = [[1, 2, 3], [4, 5]], [[[6, 7]], [[8, 9, 10]]]
    assert logprobs.linear_head(model) is not None  # a plain linear head: the chunked path
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: calls.append(o.shape[-2]))
    try:
        small = response_logps(model, prompts, responses, pad_token_id=0)
        monkeypatch.setattr(logprobs, "FULL_LOGITS_MAX", 0)  # as if the logits were large
        chunked = response_logps(model, prompts, responses, pad_token_id=0)
    finally:
        handle.remove()
    assert calls == [5, 0]  # small logits: the head at the 5 scored positions; large: at no position
    assert torch.allclose(chunked.sums, small.sums, atol=1e-5, rtol=0)
    model.config.final_logit_softcapping = 30.0  # Gemma-style logits: not hidden @ W.T
    try:
        assert logprobs.linear_head(model) is None
        full = response_logps(model, prompts, responses, pad_token_id=0)
    finally:
        model.config.final_logit_softcapping = None
    # this architecture ignores the attribute, so both paths compute the same log-probs
    assert torch.allclose(chunked.sums, full.sums, atol=1e-5, rtol=0)
    assert torch.allclose(chunked.sums, unbatched_sums(model, prompts, responses), atol=1e-5, rtol=0)


def test_a_float64_model_gives_float64_log_probs_and_float32_gated_ones_on_both_heads(head):
    model = tiny_causal_lm("llama").double()
    full = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2, share_prompt=False)
    assert full.sums.dtype == full.token_logps.dtype == torch.float64
    scorer = ResponseScorer(model, PROMPTS, PAD, share_prompt=False)
    sums, tokens, mask = gated_logps(scorer, [group[2] for group in RESPONSES], [True, False, True], token_logps=True)
    assert sums.dtype == tokens.dtype == torch.float32
    assert torch.equal(sums, full.sums[:, 2].float()) and torch.equal(tokens[mask], full.token_logps[full.token_mask].float())
