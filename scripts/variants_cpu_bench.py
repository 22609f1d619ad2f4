#!/usr/bin/env python3
"""CPU measurements of what the attention variants promise: a window's O(t*w) work, GQA's smaller KV cache.

window: flash_torch forward (no_grad) at b=1, h=8, t=8192, head_dim 64, float32, causal, with no window and
    with window=256, timed alternately in rounds in one process (``torch.utils.benchmark``), so that both see
    the same machine load; the ratio of the medians is the speed-up. Also the visible-pair ratio it aims at.
kv:     one decode step of an 8-head fused-projection layer (d_model 512, head_dim 64) after a 4096-token
    prompt, with 8 (MHA) and 1 (MQA, GQA 8:1) key/value heads: the bytes the layer's KV cache really holds
    (``LayerKVCache.nbytes``) and the time of the step's attention (flash_torch backend).

    PYTHONPATH=src python3 scripts/variants_cpu_bench.py --out docs/cpu-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch.utils import benchmark

from attnlab import build
from attnlab.backends import BACKENDS
from attnlab.bench.flops import visible_pairs
from attnlab.implementations.kv_cache import LayerKVCache


def window_speedup(rounds: int, t: int = 8192, window: int = 256) -> dict:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, t, 64, generator=gen) for _ in range(3))  # (b, h, t, d)
    attend = BACKENDS["flash_torch"]
    medians: dict[str, list[float]] = {"none": [], str(window): []}
    with torch.no_grad():
        for _ in track(range(rounds), description=f"window: {rounds} rounds at t={t}"):
            for label, w in (("none", None), (str(window), window)):
                timer = benchmark.Timer(
                    "attend(q, k, v, window=w)",
                    globals=dict(attend=attend, q=q, k=k, v=v, w=w),
                    num_threads=torch.get_num_threads(),
                )
                medians[label].append(timer.blocked_autorange(min_run_time=1.0).median)
    none_s, window_s = statistics.median(medians["none"]), statistics.median(medians[str(window)])
    return {
        "t": t,
        "window": window,
        "no_window_s": none_s,
        "window_s": window_s,
        "speedup": none_s / window_s,
        "visible_pair_ratio": visible_pairs(t) / visible_pairs(t, window=window),
        "rounds": rounds,
    }


def kv_cache(prompt: int = 4096) -> dict:
    results = {}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, prompt + 1, 512, generator=gen)  # (b, t, d_model)
    for kv_heads in (8, 1):
        layer = build("flash_torch", d_in=512, d_out=512, num_heads=8, context_length=prompt + 1, num_kv_heads=kv_heads)
        cache = LayerKVCache(prompt + 1)
        with torch.no_grad():
            layer.forward_cached(x[:, :prompt], cache)  # prefill
            step = benchmark.Timer(
                "cache.length = prompt; layer.forward_cached(token, cache)",
                globals=dict(layer=layer, cache=cache, prompt=prompt, token=x[:, prompt:]),
                num_threads=torch.get_num_threads(),
            ).blocked_autorange(min_run_time=1.0)
        results[f"kv_heads={kv_heads}"] = {"cache_bytes": cache.nbytes, "decode_step_ms": 1e3 * step.median}
    results["bytes_ratio"] = results["kv_heads=8"]["cache_bytes"] / results["kv_heads=1"]["cache_bytes"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write variants_cpu_bench.json here")
    args = parser.parse_args()
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        },
        "window": window_speedup(args.rounds),
        "kv_cache": kv_cache(),
    }
    result["machine"]["load_average_after"] = list(os.getloadavg())
    table = Table(title=f"attention variants on the CPU (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for column in ("measurement", "value"):
        table.add_column(column)
    w = result["window"]
    table.add_row("flash_torch forward, no window", f"{w['no_window_s'] * 1e3:.0f} ms")
    table.add_row(f"flash_torch forward, window {w['window']}", f"{w['window_s'] * 1e3:.0f} ms")
    table.add_row("speed-up (visible-pair ratio)", f"{w['speedup']:.2f}x ({w['visible_pair_ratio']:.1f}x)")
    for name, row in result["kv_cache"].items():
        if name != "bytes_ratio":
            table.add_row(
                f"KV cache, {name}", f"{row['cache_bytes'] / 2**20:.1f} MiB, step {row['decode_step_ms']:.2f} ms"
            )
    table.add_row("KV bytes MHA / MQA", f"{result['kv_cache']['bytes_ratio']:.1f}x")
    Console().print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "variants_cpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
