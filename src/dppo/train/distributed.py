"""Processes under torchrun: who this process is, the model wrapped for data parallelism by
torch's own engine, and the few collectives the loop itself issues.

``"ddp"`` wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel` (every process
holds the whole model; gradients are all-reduced bucket by bucket while the backward pass runs).
``"fsdp2"`` shards it with :func:`torch.distributed.fsdp.fully_shard` (each decoder layer, then the
root) for a model that does not fit one device. Either way every process starts from the same
weights and ends with the same update; one process (``WORLD_SIZE`` unset or 1) is left as it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from dppo.settings import DISTRIBUTED


def world() -> tuple[int, int]:
    """(rank, world size) of this process (torchrun sets RANK / WORLD_SIZE)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    rank, size = world()
    if size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap(model, strategy: str):
    """``model`` ready for data-parallel training over the processes (``strategy``: ddp or
    fsdp2); the forward must go through what this returns (its hooks reduce the gradients)."""
    if strategy not in DISTRIBUTED:
        raise ValueError(f"distributed strategy {strategy!r} is not one of {DISTRIBUTED}")
    if world()[1] == 1:
        return model
    if strategy == "ddp":
        # Buffers (rotary frequencies) are constants: no broadcast (a collective) at every forward.
        ids = [device().index] if device().type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for module in [*getattr(decoder, "layers", []), model]:
        # Gathered once per step and kept until its last backward: a process may run more
        # forwards than another (more micro batches, y_gen rows with a gradient), and per-forward
        # all-gathers would then pair with another process's other collectives.
        fully_shard(module, reshard_after_forward=False)
        # Gloo has no AVG or PREMUL_SUM reduce-scatter: a plain SUM, divided by the world size
        # by FSDP itself, averages on every backend.
        module.set_force_sum_reduction_for_comms(True)
    return model


def unwrapped(model):
    """The model itself (its config, decoder and head) behind a DDP wrapper; FSDP2 wraps nothing."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_scale(model) -> float:
    """What a loss that is already a share of the whole batch's mean is multiplied by so that
    the reduced gradient is that mean: DDP and FSDP2 divide the sum over the processes by their
    number."""
    return float(world()[1]) if world()[1] > 1 else 1.0


@contextlib.contextmanager
def accumulating(model, sync: bool):
    """Backward passes inside reduce no gradients unless ``sync``: the accumulation micro batches
    but the last add up locally, and the last one's backward reduces their sum once."""
    if sync or world()[1] == 1:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        model.set_reshard_after_backward(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
            model.set_reshard_after_backward(True)


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over the processes (in place), as one flat buffer: the batch's weight and
    the logged loss parts, never the gradients (the wrapper reduces those)."""
    if not tensors or world()[1] == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def common_keys(names) -> list[str]:
    """The names every process has, sorted: what a reduction of named values may hold so that it
    has one size on every process. A loss part can be missing on one process only (reward_gen is
    logged for a micro batch whose every row scored y_gen); reducing the two sets as they are
    aborts under gloo ("data size doesn't match") and hangs under NCCL."""
    rank, size = world()
    if size == 1:
        return sorted(names)
    gathered: list = [None] * size
    torch.distributed.all_gather_object(gathered, sorted(names))
    return sorted(set.intersection(*map(set, gathered)))


def agree(nonfinite: bool, stop: bool) -> tuple[int | None, bool]:
    """What every process does with this step, decided together with one all-reduce of two
    numbers, so that no process skips, stops or checkpoints alone and leaves the others waiting in
    a collective: (the highest rank whose loss is not finite, or None; whether any process was
    asked to stop)."""
    rank, size = world()
    if size == 1:
        return (rank if nonfinite else None), stop
    flags = torch.tensor([float(rank + 1) if nonfinite else 0.0, float(stop)], device=device())
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, stop_any = (int(v) for v in flags.tolist())
    return (bad - 1 if bad else None), bool(stop_any)


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


def model_state(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU (FSDP2: gathered from the shards, a collective every
    process enters; only rank 0 gets them)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().contiguous().cpu() for k, v in unwrapped(model).state_dict().items()}


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's whole state (FSDP2: gathered like :func:`model_state`)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_state(model, optimizer, weights: dict, optim: dict) -> None:
    """Load :func:`model_state` and :func:`optimizer_state` back (every process, the same files)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                       options=StateDictOptions(full_state_dict=True, strict=False))
        return
    unwrapped(model).load_state_dict(weights, strict=False)  # tied weights are stored once
    optimizer.load_state_dict(optim)


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of every gradient together (FSDP2: over the shards, the same on every process)."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor of partial sums
    return full_tensor() if full_tensor else norm
