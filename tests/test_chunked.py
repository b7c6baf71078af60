"""dppo.train.chunked_head.token_logps against the plain full-logits computation in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from numerics import U32, assert_as_accurate_as, assert_within, gamma

from dppo.train.chunked_head import token_logps


def make_inputs(n, v, h, dtype=torch.float32, bias=True, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen) * scale).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * scale).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, b, targets


def full_logits(hidden, weight, bias, targets, grad_out, dtype=torch.float64):
    """(log-probs, d/dhidden, d/dweight, d/dbias) of the plain full (N, V) logits in ``dtype``
    from the inputs' values: float64 is the exact reference, float32 the trusted path."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    logits = leaves[0] @ leaves[1].t()
    if leaves[2] is not None:
        logits = logits + leaves[2]
    lp = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    (lp * grad_out.to(dtype)).sum().backward()
    return lp.detach(), *(t.grad if t is not None else None for t in leaves)


def reference(hidden, weight, bias, targets, grad_out):
    return full_logits(hidden, weight, bias, targets, grad_out)


def head_error_bounds(hidden, weight, bias, targets, grad_out):
    """Elementwise bounds on the float32 rounding error of (log-probs, d/dhidden, d/dweight,
    d/dbias) of the head, whatever the order of its sums (tiles, kernels, CPUs): first-order
    (Higham) from the float64 terms. A logit rounds by gamma_{H+1} of its terms' magnitudes; the
    log-sum-exp, a sum of V positive terms (and one merge per tile), by the largest logit error
    plus gamma_{2V}; a probability relatively by both; each gradient is a sum over V (hidden),
    N (weight, bias) of terms with those probability errors."""
    n, h = hidden.shape
    v = weight.shape[0]
    x, w, g = hidden.double(), weight.double(), grad_out.double()
    b = bias.double() if bias is not None else torch.zeros(v, dtype=torch.float64)
    logits = x @ w.t() + b
    lse = torch.logsumexp(logits, -1, keepdim=True)
    logit_error = gamma(h + 1) * (x.abs() @ w.abs().t() + b.abs())  # (N, V)
    lse_error = logit_error.max(-1, keepdim=True).values + gamma(2 * v) + 2 * U32 * lse.abs()
    p = torch.exp(logits - lse)
    # a probability below float32's range rounds to a subnormal or 0: an absolute error of 2^-149
    p_error = p * (logit_error + lse_error + gamma(2) * (1 + (logits - lse).abs())) + 2.0**-149
    onehot = torch.nn.functional.one_hot(targets, v).double()
    terms = g.abs()[:, None] * (p - onehot).abs()  # |d loss / d logit|
    terms_error = g.abs()[:, None] * p_error
    rows = torch.arange(n)
    logps = logit_error[rows, targets] + lse_error[:, 0] + U32 * (logits[rows, targets] - lse[:, 0]).abs()
    d_hidden = (gamma(v + 1) * terms + terms_error) @ w.abs()
    d_weight = (gamma(n + 1) * terms + terms_error).t() @ x.abs()
    d_bias = (gamma(n + 1) * terms + terms_error).sum(0)
    return logps, d_hidden, d_weight, d_bias


def assert_within_head_bounds(got, inputs, names=("logps", "hidden", "weight", "bias")):
    """Each of ``got`` within its rounding bound (plus one rounding to its own dtype, for
    gradients returned in bf16); the plain float32 full-logits path must satisfy the same bounds,
    or the bounds are wrong."""
    exact, plain = full_logits(*inputs), full_logits(*inputs, dtype=torch.float32)
    bounds = head_error_bounds(*inputs)
    for name, g, e, t, bound in zip(names, got, exact, plain, bounds):
        if name is None:
            continue
        if e is None:
            assert g is None
            continue
        assert_within(t, e, bound, f"{name} (plain full logits)")
        rounding = torch.finfo(g.dtype).eps / 2 * e.abs() if g.dtype != torch.float32 else 0.0
        assert_within(g, e, bound * (1 + 1e-3) + rounding, name)


def chunked(hidden, weight, bias, targets, grad_out, **chunks):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    lp = token_logps(leaves[0], leaves[1], targets, bias=leaves[2], **chunks)
    (lp * grad_out).sum().backward()
    return lp.detach(), *(t.grad if t is not None else None for t in leaves)


SHAPES = [
    # (N, V, H, token_chunk, vocab_chunk)
    (17, 50, 8, 4096, 32768),  # one tile
    (17, 50, 8, 3, 5),  # tiny tiles, both dividing nothing
    (64, 1000, 16, 7, 128),  # chunks that do not divide N or V
    (40, 96, 12, 8, 32),  # chunks that divide both
    (1, 33, 4, 1, 1),  # one row, one-column tiles
    (30, 257, 8, 64, 64),  # token chunk larger than N, last vocab chunk of 1
]


@pytest.mark.parametrize("n,v,h,token_chunk,vocab_chunk", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_full_logits_float32(n, v, h, token_chunk, vocab_chunk, with_bias):
    hidden, weight, bias, targets = make_inputs(n, v, h, bias=with_bias, scale=2.0)
    grad_out = torch.randn(n, generator=torch.Generator().manual_seed(1))
    got = chunked(hidden, weight, bias, targets, grad_out, token_chunk=token_chunk, vocab_chunk=vocab_chunk)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == torch.float32
    assert_within_head_bounds(got, (hidden, weight, bias, targets, grad_out))


def test_large_logits_do_not_overflow():
    # logits in the hundreds: exp overflows float32 without the running max
    hidden, weight, bias, targets = make_inputs(12, 300, 8, scale=8.0)
    grad_out = torch.ones(12)
    got = chunked(hidden, weight, bias, targets, grad_out, token_chunk=5, vocab_chunk=37)
    assert torch.isfinite(got[0]).all()
    assert_within_head_bounds(got, (hidden, weight, bias, targets, grad_out))


def test_bfloat16_inputs():
    hidden, weight, bias, targets = make_inputs(33, 200, 16, dtype=torch.bfloat16)
    grad_out = torch.randn(33, generator=torch.Generator().manual_seed(2))
    # reference on the same (bf16-rounded) values: the chunked path computes in float32 from them
    got = chunked(hidden, weight, bias, targets, grad_out, token_chunk=8, vocab_chunk=64)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == got[3].dtype == torch.bfloat16
    # gradients rounded to bf16 once, at the end: as accurate as the plain ones rounded so
    assert_within_head_bounds(got, (hidden, weight, bias, targets, grad_out))


def test_mixed_dtypes_and_autocast():
    # bf16 hidden states from autocast with a float32 head; autocast must not lower the tiles
    hidden, weight, bias, targets = make_inputs(20, 120, 8)
    hidden = hidden.bfloat16()
    grad_out = torch.randn(20, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked(hidden, weight, bias, targets, grad_out, token_chunk=6, vocab_chunk=50)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    assert_within_head_bounds(got, (hidden, weight, bias, targets, grad_out))


def test_float64_gradcheck():
    # float64 inputs compute in float64, so finite differences check the analytic backward
    hidden, weight, bias, targets = make_inputs(5, 11, 3, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (hidden, weight, bias))

    def fn(hidden, weight, bias):
        return token_logps(hidden, weight, targets, bias=bias, token_chunk=2, vocab_chunk=4)

    assert fn(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, inputs)


def test_only_some_inputs_require_grad():
    hidden, weight, bias, targets = make_inputs(9, 40, 6)
    grad_out = torch.randn(9, generator=torch.Generator().manual_seed(4))
    inputs = (hidden, weight, bias, targets, grad_out)
    for needs in [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]:
        leaves = [t.detach().clone().requires_grad_(r) for t, r in zip((hidden, weight, bias), needs)]
        lp = token_logps(leaves[0], leaves[1], targets, bias=leaves[2], token_chunk=4, vocab_chunk=7)
        (lp * grad_out).sum().backward()
        for leaf, r in zip(leaves, needs):
            assert (leaf.grad is not None) == r
        assert_within_head_bounds([lp.detach(), *(leaf.grad for leaf in leaves)], inputs,
                                          [n if r else None for n, r in zip(("logps", "hidden", "weight", "bias"), (True, *needs))])
    # nothing requires grad: a plain tensor, no graph
    lp = token_logps(hidden, weight, targets, bias=bias)
    assert not lp.requires_grad
    assert_within_head_bounds([lp], inputs)


def test_no_grad_mode():
    hidden, weight, bias, targets = make_inputs(9, 40, 6)
    with torch.no_grad():
        lp = token_logps(hidden.requires_grad_(), weight, targets, bias=bias, token_chunk=4, vocab_chunk=7)
    assert not lp.requires_grad
    assert_within_head_bounds([lp], (hidden, weight, bias, targets, torch.ones(9)))


def test_empty():
    hidden, weight, bias, targets = make_inputs(0, 30, 4)
    hidden, weight, bias = (t.requires_grad_() for t in (hidden, weight, bias))
    lp = token_logps(hidden, weight, targets, bias=bias, token_chunk=3, vocab_chunk=5)
    assert lp.shape == (0,) and lp.dtype == torch.float32
    lp.sum().backward()
    assert hidden.grad.shape == (0, 4)
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))


def test_tied_weight_accumulates_with_other_uses():
    # a tied head: the same parameter is the input embedding; both gradients add up
    hidden, weight, _, targets = make_inputs(10, 25, 6)
    ids = torch.randint(0, 25, (10,), generator=torch.Generator().manual_seed(5))

    def loss(head, dtype=torch.float32):
        w = weight.detach().to(dtype).requires_grad_()
        x = hidden.to(dtype) + w[ids]
        lp = head(x, w)
        lp.sum().backward()
        return w.grad

    def full(x, w):
        return torch.log_softmax(x @ w.t(), -1).gather(1, targets[:, None]).squeeze(1)

    tiled = loss(lambda x, w: token_logps(x, w, targets, token_chunk=3, vocab_chunk=4))
    assert_as_accurate_as(tiled, loss(full), loss(full, torch.float64), "tied weight")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=torch.tensor([0, 30])), "targets must lie"),
        (dict(targets=torch.tensor([0, -1])), "targets must lie"),
        (dict(targets=torch.tensor([0.0, 1.0])), "integer targets"),
        (dict(targets=torch.tensor([0])), "integer targets"),
        (dict(bias=torch.zeros(29)), "bias"),
        (dict(token_chunk=0), "chunk sizes"),
        (dict(hidden=torch.zeros(2, 5)), "hidden"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(hidden=torch.zeros(2, 4), weight=torch.zeros(30, 4), targets=torch.tensor([0, 1]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        token_logps(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    hidden, weight, bias, targets = make_inputs(50, 300, 16)
    grad_out = torch.randn(50, generator=torch.Generator().manual_seed(6))
    cpu = chunked(hidden, weight, bias, targets, grad_out, token_chunk=16, vocab_chunk=64)
    cuda = chunked(hidden.cuda(), weight.cuda(), bias.cuda(), targets.cuda(), grad_out.cuda(),
                   token_chunk=16, vocab_chunk=64)
    for c, g in zip(cpu, cuda):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-4)


def test_qwen_vocabulary_default_chunks():
    # Qwen2.5's vocabulary with the default tiles: four full vocabulary slices and a partial one
    hidden, weight, bias, targets = make_inputs(6, 151_936, 8, bias=False, seed=7)
    targets[:3] = torch.tensor([0, 32_768, 151_935])  # first, slice-boundary and last ids
    grad_out = torch.randn(6, generator=torch.Generator().manual_seed(8))
    got = chunked(hidden, weight, None, targets, grad_out)
    assert_within_head_bounds(got, (hidden, weight, None, targets, grad_out))


def test_through_a_causal_lm_matches_response_logps():
    # How logprobs.py would use it: the model's own forward with an empty head
    # (logits_to_keep all False) and output_hidden_states, the last hidden state at the scored
    # positions, then token_logps through the (tied) head weight. Same sums and gradients.
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from dppo.train.batching import pad_sequences
    from dppo.train.logprobs import response_logps

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0)
    model = Qwen2ForCausalLM(config)
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[[10, 11, 12, 13], [14]], [[15, 16], [17, 18, 19]]]

    def grads(of):
        out = {n: p.grad.clone() for n, p in of.named_parameters() if p.grad is not None}
        of.zero_grad(set_to_none=True)
        return out

    def plain(of):  # the full-logits path: float32 is the trusted one, float64 exact
        sums = response_logps(of, prompts, responses, pad_token_id=0, share_prompt=False).sums
        sums.sum().backward()
        return sums.detach(), grads(of)

    want, want_grads = plain(model)
    exact, exact_grads = plain(copy.deepcopy(model).double())

    sequences = [p + r for p, group in zip(prompts, responses) for r in group]
    prompt_lens = [len(p) for p, group in zip(prompts, responses) for _ in group]
    input_ids, attention_mask = pad_sequences(sequences, 0, "right")
    scored = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, (seq, n) in enumerate(zip(sequences, prompt_lens)):
        scored[row, n - 1 : len(seq) - 1] = True
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=torch.zeros_like(scored), output_hidden_states=True, use_cache=False)
    assert out.logits.shape[0] == 0  # the head ran at no position
    hidden = out.hidden_states[-1][scored]
    targets = input_ids[:, 1:][scored[:, :-1]]
    head = model.get_output_embeddings()
    lp = token_logps(hidden, head.weight, targets, bias=head.bias, token_chunk=5, vocab_chunk=13)
    rows = scored.nonzero(as_tuple=True)[0]
    got = torch.zeros(len(sequences)).index_add(0, rows, lp).view_as(want)
    got.sum().backward()
    assert_as_accurate_as(got.detach(), want, exact, "sums")
    got_grads = grads(model)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        assert_as_accurate_as(got_grads[name], want_grads[name], exact_grads[name], name)
