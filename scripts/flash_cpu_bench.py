#!/usr/bin/env python3
"""CPU measurements of flash_torch: peak memory of forward+backward against the naive backend, and forward
speed against SDPA at the notebook configuration.

memory: b=1, h=4, t=8192, d=64, float32, causal; each backend runs forward+backward in its own child
    process, and the peak is the growth of the child's maximum resident set size (ru_maxrss) over what
    it held after building the inputs.
speed:  batch 8, 1024 tokens, d_model 768, 12 heads (head dim 64), float32, causal forward under no_grad;
    the attention core (b, h, t, d) and the whole multi-head module (fused projection + core), flash_torch
    and sdpa timed alternately in rounds (``torch.utils.benchmark``), so that both see the same machine load.

    PYTHONPATH=src python3 scripts/flash_cpu_bench.py memory speed --out docs/cpu-results
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_child(backend: str, t: int) -> dict:
    """Run forward+backward of ``backend`` in this (child) process; report the growth of the peak RSS in MiB."""
    from attnlab.backends import BACKENDS

    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 4, t, 64, generator=gen) for _ in range(4))
    leaves = [x.requires_grad_() for x in (q, k, v)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    out = BACKENDS[backend](*leaves, causal=True)
    out.backward(dout)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    return {"backend": backend, "t": t, "peak_growth_mib": (after - before) / 1024, "seconds": seconds}


def memory(t: int) -> dict:
    results = {}
    for backend in ("flash_torch", "naive"):
        print(f"memory: {backend} forward+backward at t={t} in a child process ...", flush=True)
        command = [sys.executable, __file__, "--child", backend, "--t", str(t)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {results[backend]}", flush=True)
    results["ratio_flash_over_naive"] = results["flash_torch"]["peak_growth_mib"] / results["naive"]["peak_growth_mib"]
    return results


def speed(rounds: int) -> dict:
    from torch.utils import benchmark

    from attnlab import build
    from attnlab.backends import BACKENDS

    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 12, 1024, 64) for _ in range(3))  # (b, h, t, d)
    x = torch.randn(8, 1024, 768)  # (b, t, d_model)
    modules = {
        name: build(name, d_in=768, d_out=768, num_heads=12, context_length=1024) for name in ("sdpa", "flash_torch")
    }
    modules["flash_torch"].set_weights(modules["sdpa"].get_weights())
    cases = {
        "core sdpa": lambda: BACKENDS["sdpa"](q, k, v),
        "core flash_torch": lambda: BACKENDS["flash_torch"](q, k, v),
        "module sdpa": lambda: modules["sdpa"](x),
        "module flash_torch": lambda: modules["flash_torch"](x),
    }
    with torch.no_grad():
        err = (modules["flash_torch"](x) - modules["sdpa"](x)).abs().max().item()
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for index in range(rounds):
            for name, fn in cases.items():
                timer = benchmark.Timer("fn()", globals={"fn": fn}, label=name, num_threads=torch.get_num_threads())
                samples[name].append(timer.blocked_autorange(min_run_time=1.0).median * 1e3)
            print(
                f"speed: round {index + 1}/{rounds}: " + ", ".join(f"{n} {s[-1]:.0f} ms" for n, s in samples.items()),
                flush=True,
            )
    summary = {
        name: {"median_ms": statistics.median(s), "min_ms": min(s), "rounds_ms": s} for name, s in samples.items()
    }
    for scope in ("core", "module"):
        flash, sdpa = summary[f"{scope} flash_torch"], summary[f"{scope} sdpa"]
        summary[f"{scope} ratio (median of rounds)"] = flash["median_ms"] / sdpa["median_ms"]
        summary[f"{scope} ratio (min of rounds)"] = flash["min_ms"] / sdpa["min_ms"]
    summary["module max abs difference"] = err
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("parts", nargs="*", help="memory and/or speed (default: both)")
    parser.add_argument("--t", type=int, default=8192, help="sequence length of the memory measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds of the speed measurement")
    parser.add_argument("--threads", type=int, help="torch threads for the speed part (default: torch's)")
    parser.add_argument("--out", type=Path, help="write flash_cpu_bench.json here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(peak_child(args.child, args.t)))
        return 0
    parts = args.parts or ["memory", "speed"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if unknown := set(parts) - {"memory", "speed"}:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose memory and/or speed")
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    if "memory" in parts:
        results["memory"] = memory(args.t)
    if "speed" in parts:
        results["speed"] = speed(args.rounds)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "flash_cpu_bench.json" if args.threads is None else f"flash_cpu_bench_{args.threads}thread.json"
        (args.out / name).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
