#!/usr/bin/env python3
"""Context parallelism at fixed total length: activation memory per rank and ring attention's time per rank.

For N = 1, 2, 4 gloo ranks on this machine (spawned here; one thread each), every rank holds t/N tokens of
q, k, v (b=1, h=8 query heads over h_kv=2 key/value heads, head_dim 64, causal, head-tail load balancing) and
runs ``context_parallel_attention`` forward and backward with the ``flash_torch`` backend. Reported per N:

- **activation bytes per rank**: the bytes of every tensor autograd saves for the backward pass during the
  forward (``torch.autograd.graph.saved_tensors_hooks``), i.e. what training must keep per attention call;
- **time per rank** (ring strategy; median of ``--repeats`` forward+backward calls after a barrier) against the
  single-process time divided by N (the ideal; the ratio should stay near 1 when the key/value transfers overlap
  the block computations). Ranks beyond the CPU count share cores, so their times are not comparable: those rows
  say so.

    PYTHONPATH=src python3 scripts/cp_scaling.py
    PYTHONPATH=src python3 scripts/cp_scaling.py --tokens 4096 --ranks 1,2 --strategy ring
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnlab.parallel import context_parallel_attention, shard

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64


def _saved_bytes(fn) -> tuple[int, object]:
    """Bytes of the tensors autograd saves while ``fn()`` runs (each storage counted once), and fn's result."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return sum(storages.values()), result


def _rank(rank: int, world: int, store_dir: str, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(store_dir, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=600))
    generator = torch.Generator().manual_seed(0)
    t = args["tokens"]
    full = [torch.randn(1, h, t, HEAD_DIM, generator=generator) for h in (HEADS, KV_HEADS, KV_HEADS)]
    q, k, v = (shard(x).requires_grad_() for x in full)  # (1, heads, t / world, hd) each

    def step() -> torch.Tensor:
        return context_parallel_attention(q, k, v, strategy=args["strategy"], backend="flash_torch", causal=True)

    saved, attended = _saved_bytes(step)  # (1, h, t / world, hd)
    attended.sum().backward()
    times = []
    for _ in range(args["repeats"]):
        dist.barrier()
        start = time.perf_counter()
        step().sum().backward()
        times.append(time.perf_counter() - start)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"saved_bytes": saved, "median_s": statistics.median(times)}))
    dist.barrier()
    dist.destroy_process_group()


def run(world: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as store_dir, tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(world, store_dir, args, out), nprocs=world, start_method="spawn", join=True)
        reports = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "world": world,
        "saved_bytes": max(r["saved_bytes"] for r in reports),
        "median_s": max(r["median_s"] for r in reports),  # the slowest rank sets the pace
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--strategy", default="ring", choices=("ring", "all_gather", "ulysses"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {"tokens": args.tokens, "strategy": args.strategy, "repeats": args.repeats}
    rows = []
    for world in (int(n) for n in args.ranks.split(",")):
        print(f"cp_scaling: {world} rank(s) ...", flush=True)
        rows.append(run(world, settings))
    base = rows[0]
    cpus = os.cpu_count() or 1
    print(f"\n{args.strategy}, t={args.tokens}, b=1, h={HEADS}, h_kv={KV_HEADS}, head_dim={HEAD_DIM}, causal, "
          f"float32, flash_torch, 1 thread per rank, {cpus} CPUs, torch {torch.__version__}\n")  # fmt: skip
    print("| ranks | activation MiB / rank | vs 1 rank | ms / rank (fwd+bwd) | vs (1-rank time / N) |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        memory = row["saved_bytes"] / base["saved_bytes"]
        ideal = base["median_s"] / row["world"]
        note = "" if row["world"] <= cpus else " (ranks share cores)"
        print(
            f"| {row['world']} | {row['saved_bytes'] / 2**20:.1f} | {memory:.3f} | {row['median_s'] * 1e3:.0f} | "
            f"{row['median_s'] / ideal:.2f}x{note} |"
        )


if __name__ == "__main__":
    main()
