"""Checks shared by the SFT tests on the tiny model (test_sft.py) and on SmolLM2 (test_smollm2.py)."""

from __future__ import annotations

import torch

from dppo.train.batching import pad_sequences
from dppo.train.sft import SFTTask


def masked_reference_loss(model, rows: list[dict], pad: int) -> torch.Tensor:
    """The SFT loss computed independently: the model's full logits over right-padded
    prompt + response sequences, cross-entropy (in float64) only where the next token is a
    response token (the prompt and the padding masked), averaged over those tokens."""
    sequences = [r["prompt_ids"] + r["response_ids"] for r in rows]
    input_ids, attention_mask = pad_sequences(sequences, pad)
    labels = torch.full_like(input_ids, -100)
    for i, r in enumerate(rows):
        start = len(r["prompt_ids"])
        labels[i, start : start + len(r["response_ids"])] = torch.tensor(r["response_ids"])
    # float64: float32 cross-entropy over SmolLM2's 49k-token vocabulary is itself off by ~4e-5
    # (measured against float64), more than the loss under test.
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
    return loss.float()


def check_sft_loss_masks_the_prompt(model, rows: list[dict], pad: int) -> None:
    """SFTTask's loss and gradient equal the independent masked computation; changing a prompt
    token's own prediction target changes nothing (the prompt carries no loss)."""
    task = SFTTask(rows, pad)
    params = [p for p in model.parameters() if p.requires_grad]
    loss, _ = task.loss(model, rows)
    grads = torch.autograd.grad(loss, params)
    expected = masked_reference_loss(model, rows, pad)
    expected_grads = torch.autograd.grad(expected, params)
    assert torch.allclose(loss, expected, atol=1e-5, rtol=1e-5), (float(loss), float(expected))
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-3)
    assert task.weight(rows) == sum(len(r["response_ids"]) for r in rows)
