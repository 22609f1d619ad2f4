#!/usr/bin/env python3
"""CPU decoding benchmark: one new query against a KV cache of 1k..32k tokens, per attention backend.

b=1, 32 query heads sharing 8 key/value heads (GQA 4:1), head_dim 128, float32, causal, under no_grad. Each
step reads the whole cache once: K and V, ``2 * b * h_kv * t * head_dim * 4`` bytes, so decoding is bound by
memory bandwidth; the table gives each backend's time per step and the bandwidth it reaches (bytes read / time).
Backends are timed alternately at each length (``torch.utils.benchmark``), so all see the same machine load.

    PYTHONPATH=src python3 scripts/decode_bench.py
    PYTHONPATH=src python3 scripts/decode_bench.py --lengths 1024,4096 --backends flash_decode_torch,sdpa --markdown
"""

from __future__ import annotations

import argparse
import os

import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark

from attnlab.backends import BACKENDS

BATCH, HEADS, KV_HEADS, HEAD_DIM = 1, 32, 8, 128
DEFAULT_LENGTHS = "1024,2048,4096,8192,16384,32768"
DEFAULT_BACKENDS = "flash_decode_torch,flash_torch,naive,sdpa"
THREADS = torch.get_num_threads()  # torch.utils.benchmark.Timer runs on 1 thread unless told


def cache_bytes(t: int, dtype: torch.dtype) -> int:
    """Bytes of K and V one decoding step reads."""
    return 2 * BATCH * KV_HEADS * t * HEAD_DIM * torch.finfo(dtype).bits // 8


def measure(lengths: list[int], backends: list[str], min_run_time: float) -> list[dict]:
    """One row per (length, backend): median ms per step, GB/s, and the max difference from sdpa's output."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for t in lengths:
        q = torch.randn(BATCH, HEADS, 1, HEAD_DIM, generator=gen)  # (b, h, 1, d)
        k = torch.randn(BATCH, KV_HEADS, t, HEAD_DIM, generator=gen)  # (b, h_kv, t, d)
        v = torch.randn(BATCH, KV_HEADS, t, HEAD_DIM, generator=gen)  # (b, h_kv, t, d)
        with torch.no_grad():
            expected = BACKENDS["sdpa"](q, k, v)
            for name in backends:
                fn = BACKENDS[name]
                err = (fn(q, k, v) - expected).abs().max().item()
                timer = benchmark.Timer("fn(q, k, v)", globals={"fn": fn, "q": q, "k": k, "v": v}, num_threads=THREADS)
                seconds = timer.blocked_autorange(min_run_time=min_run_time).median
                gbps = cache_bytes(t, q.dtype) / seconds / 1e9
                rows.append({"t": t, "backend": name, "ms": seconds * 1e3, "gbps": gbps, "err": err})
    return rows


def print_rich(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in ("context", "KV read / step", "backend", "ms / step", "GB/s", "max |diff| vs sdpa"):
        table.add_column(column, justify="right" if column != "backend" else "left")
    for row in rows:
        mib = cache_bytes(row["t"], torch.float32) / 2**20
        table.add_row(
            str(row["t"]),
            f"{mib:.0f} MiB",
            row["backend"],
            f"{row['ms']:.2f}",
            f"{row['gbps']:.1f}",
            f"{row['err']:.1e}",
        )
    Console(width=120).print(table)


def print_markdown(rows: list[dict]) -> None:
    print("| context | KV read / step | backend | ms / step | GB/s | max abs diff vs sdpa |")
    print("|---:|---:|:---|---:|---:|---:|")
    for row in rows:
        mib = cache_bytes(row["t"], torch.float32) / 2**20
        cells = (
            row["t"],
            f"{mib:.0f} MiB",
            row["backend"],
            f"{row['ms']:.2f}",
            f"{row['gbps']:.1f}",
            f"{row['err']:.1e}",
        )
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated KV cache lengths")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS, help="comma-separated registered backends")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per (length, backend)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    backends = args.backends.split(",")
    if unknown := [name for name in backends if name not in BACKENDS]:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(BACKENDS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = measure(lengths, backends, args.min_run_time)
    title = (
        f"decoding: b={BATCH}, heads {HEADS}:{KV_HEADS}, head_dim {HEAD_DIM}, float32, t_q=1; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {load[0]:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print_rich(rows, title)
    if args.markdown:
        print(title)
        print_markdown(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
