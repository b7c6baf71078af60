"""Per-token log-probs through the LM head without materialising the (tokens, vocabulary) logits.

At Qwen2.5's vocabulary (151,936) the float32 logits of one micro-batch's response tokens take
gigabytes, and their gradient as much again. :func:`token_logps` computes
``log_softmax(hidden @ weight.T + bias)[n, targets[n]]`` in tiles of at most
``(token_chunk, vocab_chunk)`` logits with an online (running max, running sum-exp)
log-sum-exp, in float32 whatever the input dtype (float64 for float64 inputs). Its backward
recomputes the tiles from the saved inputs and the per-row log-sum-exp instead of keeping any of
them: one extra head matmul for memory that no longer grows with N * V.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def token_logps(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    token_chunk: int = 4096,
    vocab_chunk: int = 32768,
) -> Tensor:
    """float32 ``log_softmax(hidden @ weight.T + bias)[n, targets[n]]`` for every row n.

    ``hidden`` (N, H), ``weight`` (V, H) (an LM head's ``weight``), ``targets`` (N,) integer ids in
    [0, V), ``bias`` (V,) or None. Any float dtypes: every tile is computed from float32 copies of
    its inputs (outside autocast), so bf16 inputs give float32 log-probs of their exact values;
    float64 inputs compute, and return, float64 (for gradcheck).
    Differentiable in ``hidden``, ``weight`` and ``bias`` (gradients in their own dtypes); at most
    one (token_chunk, vocab_chunk) float32 tile of logits exists at a time, forward or backward.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"need integer targets of shape ({hidden.shape[0]},), got {targets.dtype} {tuple(targets.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"need bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if token_chunk < 1 or vocab_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got token_chunk={token_chunk}, vocab_chunk={vocab_chunk}")
    if targets.numel():
        low, high = (int(x) for x in targets.aminmax())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(f"targets must lie in [0, {weight.shape[0]}), got [{low}, {high}]")
    return _TokenLogps.apply(hidden, weight, bias, targets.long(), int(token_chunk), int(vocab_chunk))


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _tiles(num_rows: int, vocab: int, token_chunk: int, vocab_chunk: int):
    """(v0, v1, t0, t1) of every tile, vocabulary outer so each weight slice is upcast once."""
    for v0 in range(0, vocab, vocab_chunk):
        for t0 in range(0, num_rows, token_chunk):
            yield v0, min(v0 + vocab_chunk, vocab), t0, min(t0 + token_chunk, num_rows)


class _TileMaker:
    """Logits tiles in the compute dtype, in one reused buffer (no allocation per tile)."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, token_chunk: int, vocab_chunk: int):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.dtype = _compute_dtype(hidden, weight, bias)
        rows, vocab = min(hidden.shape[0], token_chunk), min(weight.shape[0], vocab_chunk)
        self.buffer = torch.empty(rows * vocab, dtype=self.dtype, device=hidden.device)
        self._slice = None

    def weight_slice(self, v0: int, v1: int) -> tuple[Tensor, Tensor | None]:
        """weight[v0:v1] (and bias) in the compute dtype, upcast once per vocabulary slice."""
        if self._slice is None or self._slice[0] != (v0, v1):
            w = self.weight[v0:v1].to(self.dtype)
            b = None if self.bias is None else self.bias[v0:v1].to(self.dtype)
            self._slice = ((v0, v1), w, b)
        return self._slice[1], self._slice[2]

    def tile(self, v0: int, v1: int, t0: int, t1: int) -> tuple[Tensor, Tensor, Tensor]:
        """(logits tile (t1 - t0, v1 - v0), upcast hidden rows, upcast weight rows)."""
        w, b = self.weight_slice(v0, v1)
        h = self.hidden[t0:t1].to(self.dtype)
        out = self.buffer[: (t1 - t0) * (v1 - v0)].view(t1 - t0, v1 - v0)
        if b is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(b, h, w.t(), out=out)
        return out, h, w


def _local_targets(targets: Tensor, v0: int, v1: int) -> tuple[Tensor, Tensor]:
    """(column of each row's target in the slice [v0, v1), clamped; whether it lies there)."""
    local = targets - v0
    inside = (local >= 0) & (local < v1 - v0)
    return local.clamp(0, v1 - v0 - 1).unsqueeze(1), inside


class _TokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_chunk, vocab_chunk):
        device, num_rows, dtype = hidden.device, hidden.shape[0], _compute_dtype(hidden, weight, bias)
        running_max = torch.full((num_rows,), float("-inf"), dtype=dtype, device=device)
        sum_exp = torch.zeros(num_rows, dtype=dtype, device=device)
        target_logit = torch.zeros(num_rows, dtype=dtype, device=device)
        with torch.autocast(device.type, enabled=False):
            tiles = _TileMaker(hidden, weight, bias, token_chunk, vocab_chunk)
            for v0, v1, t0, t1 in _tiles(num_rows, weight.shape[0], token_chunk, vocab_chunk):
                tile, _, _ = tiles.tile(v0, v1, t0, t1)
                column, inside = _local_targets(targets[t0:t1], v0, v1)
                picked = tile.gather(1, column).squeeze(1)
                target_logit[t0:t1] = torch.where(inside, picked, target_logit[t0:t1])
                old_max = running_max[t0:t1]
                new_max = torch.maximum(old_max, tile.amax(dim=1))
                # a row whose logits are all -inf so far: shift by 0, not -inf (no inf - inf)
                shift = torch.where(new_max == float("-inf"), 0.0, new_max)
                tile.sub_(shift.unsqueeze(1)).exp_()
                sum_exp[t0:t1] = sum_exp[t0:t1] * torch.exp(old_max - shift) + tile.sum(dim=1)
                running_max[t0:t1] = new_max
        log_sum_exp = running_max + sum_exp.log()
        ctx.save_for_backward(hidden, weight, bias, targets, log_sum_exp)
        ctx.chunks = (token_chunk, vocab_chunk)
        return target_logit - log_sum_exp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, log_sum_exp = ctx.saved_tensors
        token_chunk, vocab_chunk = ctx.chunks
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        num_rows, vocab, dtype = hidden.shape[0], weight.shape[0], log_sum_exp.dtype
        grad_out = grad_out.to(dtype)
        # grad_hidden sums over every vocabulary slice: compute dtype throughout. A slice of
        # grad_weight and grad_bias is complete after its vocabulary slice's tiles.
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device) if need_bias else None
        if num_rows and (need_hidden or need_weight or need_bias):
            with torch.autocast(hidden.device.type, enabled=False):
                tiles = _TileMaker(hidden, weight, bias, token_chunk, vocab_chunk)
                for v0 in range(0, vocab, vocab_chunk):
                    v1 = min(v0 + vocab_chunk, vocab)
                    # gradients in the compute dtype accumulate in place, others in a slice, then cast
                    weight_acc = bias_acc = None
                    if need_weight:
                        weight_acc = (grad_weight[v0:v1] if grad_weight.dtype == dtype
                                      else grad_weight.new_zeros((v1 - v0, weight.shape[1]), dtype=dtype))
                    if need_bias:
                        bias_acc = (grad_bias[v0:v1] if grad_bias.dtype == dtype
                                    else grad_bias.new_zeros(v1 - v0, dtype=dtype))
                    for t0 in range(0, num_rows, token_chunk):
                        t1 = min(t0 + token_chunk, num_rows)
                        tile, h, w = tiles.tile(v0, v1, t0, t1)
                        g = grad_out[t0:t1]
                        # d log p[target] / d logits = onehot(target) - softmax, times grad_out
                        tile.sub_(log_sum_exp[t0:t1].unsqueeze(1)).exp_().mul_(-g.unsqueeze(1))
                        column, inside = _local_targets(targets[t0:t1], v0, v1)
                        tile.scatter_add_(1, column, torch.where(inside, g, 0.0).unsqueeze(1))
                        if need_hidden:
                            grad_hidden[t0:t1].addmm_(tile, w)
                        if need_weight:
                            weight_acc.addmm_(tile.t(), h)
                        if need_bias:
                            bias_acc.add_(tile.sum(dim=0))
                    if need_weight and grad_weight.dtype != dtype:
                        grad_weight[v0:v1] = weight_acc
                    if need_bias and grad_bias.dtype != dtype:
                        grad_bias[v0:v1] = bias_acc
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None
