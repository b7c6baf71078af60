"""Checks shared by the SFT tests on the tiny model (test_sft.py) and on SmolLM2 (test_smollm2.py)."""

from __future__ import annotations

import torch

from dppo.sft import IGNORE_INDEX


def positions_with_gradient(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions the SFT loss sends gradient through, and which it should.

    Returns (gets_gradient, predicts_response), both bool (batch, length): the gradient of the
    model's own shifted causal-LM loss (the one the Trainer uses) w.r.t. each position's logits
    is nonzero, and position t predicts a response token (labels[t + 1] is not masked).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    loss = model.loss_function(logits, batch["labels"], vocab_size=model.config.vocab_size)
    loss.backward()
    gets_gradient = logits.grad.norm(dim=-1) > 0
    predicts_response = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_response[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    return gets_gradient, predicts_response
