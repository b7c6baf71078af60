"""Which rows each optimizer step sees and at which learning rate: batches fixed by (seed,
epoch), the micro batches of one process, warm-up and decay."""

from __future__ import annotations

import math

import torch

from dppo.settings import OptimSettings

MEGABATCH_FACTOR = 50  # length grouping sorts within random runs of 50 batches, as transformers does


def micro_batches(opt: OptimSettings, processes: int) -> tuple[int, int]:
    """(rows per process per batch, rows per micro batch): the effective batch stays
    ``opt.batch_size`` whatever the number of processes."""
    if opt.batch_size % processes:
        raise ValueError(f"batch_size {opt.batch_size} is not divisible by the {processes} processes")
    per_process = opt.batch_size // processes
    micro = min(opt.micro_batch_size or per_process, per_process)
    if per_process % micro:
        raise ValueError(f"{per_process} rows per process is not a multiple of micro_batch_size {micro}")
    return per_process, micro


def total_steps(opt: OptimSettings, n_rows: int) -> int:
    per_epoch = math.ceil(n_rows / opt.batch_size)
    return opt.max_steps if opt.max_steps > 0 else max(1, math.ceil(opt.epochs * per_epoch))


def lr_factor(opt: OptimSettings, step: int, total: int) -> float:
    """Multiplier of ``opt.lr`` for the update after ``step`` updates (warm-up, then decay)."""
    warmup = math.ceil(opt.warmup_ratio * total)
    if opt.scheduler == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if opt.scheduler == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if opt.scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine


def batch_order(n_rows: int, opt: OptimSettings, epoch: int, lengths: list[int] | None) -> list[int]:
    """The row order of one epoch, fixed by (seed, epoch): a random permutation, or with
    ``group_by_length`` random runs of 50 batches each sorted by length (less padding, the
    order of batches still random)."""
    generator = torch.Generator().manual_seed(opt.seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist()
    if not (opt.group_by_length and lengths):
        return order
    mega = MEGABATCH_FACTOR * opt.batch_size
    grouped = []
    for start in range(0, n_rows, mega):
        grouped += sorted(order[start : start + mega], key=lambda i: -lengths[i])
    batches = [grouped[i : i + opt.batch_size] for i in range(0, n_rows, opt.batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffle for i in batches[b]]


def batch_rows(n_rows: int, opt: OptimSettings, step: int, lengths: list[int] | None) -> list[int]:
    """Row indices of optimizer step ``step`` (0-based)."""
    per_epoch = math.ceil(n_rows / opt.batch_size)
    epoch, position = divmod(step, per_epoch)
    order = batch_order(n_rows, opt, epoch, lengths)
    return order[position * opt.batch_size : (position + 1) * opt.batch_size]
