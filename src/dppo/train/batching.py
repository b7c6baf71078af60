"""Batches of token sequences: padding, and the packed widths length-grouped batches sort by.

The policy forward packs the B*K (prompt + response) sequences of a batch to the batch's
longest one, so its cost is about B * K * max length. Batching rows of similar length
(``OptimSettings.group_by_length``, :func:`dppo.train.schedule.batch_order`) cuts the padding while
the order of batches stays random; the loss of any one batch is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

PADDING_SIDES = ("left", "right")
RESPONSE_KEYS = ("chosen_ids", "rejected_ids")
GEN_KEY = "gen_ids"


def pad_sequences(sequences: Sequence[Sequence[int]], pad_token_id: int, side: str = "right"):
    """(input ids, attention mask), both (N, longest) int64 tensors: ``sequences`` padded with
    ``pad_token_id`` on ``side`` ("left": every sequence ends in the last column, as generation
    needs)."""
    import torch

    if side not in PADDING_SIDES:
        raise ValueError(f"padding side {side!r} is not one of: {', '.join(PADDING_SIDES)}")
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        input_ids[row, start : start + len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        attention_mask[row, start : start + len(seq)] = 1
    return input_ids, attention_mask


def packed_lengths(records: Sequence[dict], with_gen: bool) -> list[int]:
    """Width each row needs in the packed forward: its prompt plus its longest response
    (y_gen included when the forward scores it)."""
    keys = (*RESPONSE_KEYS, GEN_KEY) if with_gen else RESPONSE_KEYS
    return [len(r["prompt_ids"]) + max(len(r[k]) for k in keys) for r in records]
