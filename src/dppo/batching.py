"""Length-grouped batches for preference training.

The policy forward packs the B*K (prompt + response) sequences of a batch to the batch's
longest one, so its cost is about B * K * max length. Batching rows of similar length
(transformers' ``LengthGroupedSampler``: random mega-batches of 50 batches, sorted by length
inside) cuts the padding while the order of batches stays random. Enabled by
``OptimConfig.group_by_length``; the loss of any one batch is unchanged, only which rows
share a batch differs.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers.trainer_pt_utils import LengthGroupedSampler

RESPONSE_KEYS = ("chosen_ids", "rejected_ids")
GEN_KEY = "gen_ids"


def packed_lengths(records: Sequence[dict], with_gen: bool) -> list[int]:
    """Width each row needs in the packed forward: its prompt plus its longest response
    (y_gen included when the forward scores it)."""
    keys = (*RESPONSE_KEYS, GEN_KEY) if with_gen else RESPONSE_KEYS
    return [len(r["prompt_ids"]) + max(len(r[k]) for k in keys) for r in records]


def length_grouped_sampler(records: Sequence[dict], batch_size: int, with_gen: bool) -> LengthGroupedSampler:
    """Sampler over ``records`` whose consecutive ``batch_size`` indices have similar packed
    lengths. Its randomness comes from the global torch generator, which the Trainer seeds."""
    return LengthGroupedSampler(batch_size, lengths=packed_lengths(records, with_gen))


def padding_fraction(records: Sequence[dict], batches: Sequence[Sequence[int]], with_gen: bool) -> float:
    """Share of the packed (B*K, width) token grid that is padding, over ``batches``."""
    keys = (*RESPONSE_KEYS, GEN_KEY) if with_gen else RESPONSE_KEYS
    real = padded = 0
    for batch in batches:
        widths = [len(records[i]["prompt_ids"]) + len(records[i][k]) for i in batch for k in keys]
        real += sum(widths)
        padded += len(widths) * max(widths)
    return 1.0 - real / padded
