"""One optimizer step on 2 CPU processes (gloo): torch's DistributedDataParallel, as the training
loop runs it, against the hand-written all-reduce the loop used before (kept here as the peer).

    python benchmarks/ddp_step.py [--steps 20] [--micro 2] [--hidden 256] [--layers 4] [--vocab 2048]

Both run in the same two processes on the same model, rows and optimizer settings, their steps
interleaved (DDP, hand, DDP, hand, ...) so that what else runs on the machine weighs on both
alike; rank 0 prints the median and the fastest step of each and their ratio. A step is
``micro`` micro batches of forward and backward (SFT loss, dppo.train.sft.SFTTask), the gradient
reduction, clipping and AdamW. The first ``--warmup`` steps of each are not timed.

- ``ddp``: dppo.train.distributed.wrap (DistributedDataParallel), ``no_sync`` over every micro
  batch but the last, whose backward all-reduces the gradients bucket by bucket as they are
  ready, overlapping the rest of the backward pass;
- ``hand``: every backward local, then all the gradients flattened into one buffer, one
  all-reduce, copied back (what dppo.train.loop did before DDP).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import time

import torch

WORKERS = 2


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each implementation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro", type=int, default=2, help="micro batches per step and process")
    parser.add_argument("--rows", type=int, default=4, help="rows per micro batch")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser.parse_args()


def hand_all_reduce(params: list[torch.Tensor]) -> None:
    """The peer: the sum of every gradient over the processes as one flat all-reduce, then the mean."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def main() -> None:
    args = parse()
    if "LOCAL_RANK" not in os.environ:  # the launcher: the same script under torchrun
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORKERS}",
                   __file__, *sys.argv[1:]]
        raise SystemExit(subprocess.run(command).returncode)
    from transformers import LlamaConfig, LlamaForCausalLM

    from dppo.train.distributed import accumulating, init_distributed, world, wrap
    from dppo.train.sft import SFTTask

    torch.set_num_threads(args.threads)
    init_distributed()
    rank, size = world()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=args.prompt_len + args.response_len)
    base = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1 + rank)  # each process its own rows
    rows = [{"prompt_ids": torch.randint(1, args.vocab, (args.prompt_len,), generator=generator).tolist(),
             "response_ids": torch.randint(1, args.vocab, (args.response_len,), generator=generator).tolist()}
            for _ in range(args.micro * args.rows)]
    chunks = [rows[i : i + args.rows] for i in range(0, len(rows), args.rows)]
    task = SFTTask(rows, pad=0)

    models = {"ddp": wrap(copy.deepcopy(base).train(), "ddp"), "hand": copy.deepcopy(base).train()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        params = [p for p in model.parameters() if p.requires_grad]
        torch.distributed.barrier()
        start = time.perf_counter()
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            with accumulating(model, sync=last) if name == "ddp" else contextlib.nullcontext():
                loss, _ = task.loss(model, chunk)
                (loss / len(chunks)).backward()
        if name == "hand":
            hand_all_reduce(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.distributed.barrier()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        for name in models:
            seconds = step(name)
            if i >= args.warmup:
                times[name].append(seconds)
    # The two implementations must have trained the same weights (float rounding aside).
    ddp_params, hand_params = list(models["ddp"].module.parameters()), list(models["hand"].parameters())
    drift = max(float((a - b).abs().max()) for a, b in zip(ddp_params, hand_params))
    if rank == 0:
        n_params = sum(p.numel() for p in base.parameters())
        print(f"# {size} processes (gloo, CPU, {args.threads} thread(s) each), {n_params / 1e6:.1f}M parameters "
              f"(hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}), {args.micro} micro batches of "
              f"{args.rows} rows x {args.prompt_len}+{args.response_len} tokens per process per step, "
              f"{args.steps} timed steps each (after {args.warmup}), interleaved; torch {torch.__version__}; "
              f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
        print(f"# largest weight difference after {args.warmup + args.steps} steps, ddp vs hand: {drift:.2e}")
        print("| implementation | median step (ms) | fastest step (ms) |")
        print("| --- | --- | --- |")
        for name in models:
            print(f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {min(times[name]) * 1e3:.1f} |")
        ratio = statistics.median(times["ddp"]) / statistics.median(times["hand"])
        print(f"| ddp / hand (median) | {ratio:.3f} | |")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
