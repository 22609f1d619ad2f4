#!/usr/bin/env python3
"""Kernel benchmark: attnlab's flash_triton against SDPA's FlashAttention-2 and cuDNN backends and compiled
FlexAttention, causal, bfloat16, at the sizes below (the usual FlashAttention benchmark grid).

Sizes: head_dim 64 and 128, t = 1024, 4096, 16384, with b * t = 16384 tokens and h * d = 2048. FLOPs are
counted as 4 * b * h * t^2 * d / 2 for the causal forward and 2.5x that for the backward. Times are
``triton.testing.do_bench`` medians. With ``--tune`` each kernel of flash_triton (forward, backward dq,
backward dk/dv) is timed alone over a few block configurations per size and the fastest is used.
Before timing, each size's flash_triton output and gradients are compared with SDPA's
(relative Frobenius error; bf16 lands near 3e-3).

    PYTHONPATH=src python3 scripts/flash_bench.py --out results --tune
    TRITON_INTERPRET=1 PYTHONPATH=src python3 scripts/flash_bench.py --dry-run   # CPU smoke test, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.backends.flash_triton import flash_triton_attention
from attnlab.kernels.config import FlashTritonConfig, KernelConfig, default_config

SIZES = [(64, 1024), (64, 4096), (64, 16384), (128, 1024), (128, 4096), (128, 16384)]
TOKENS, WIDTH = 16384, 2048  # b * t and h * d
DRY_SIZES, DRY_TOKENS, DRY_WIDTH = [(64, 64), (128, 96)], 192, 256

K = KernelConfig
#: Candidates per head dim; all compile for sm_90 without register spills (cuobjdump resource usage).
CANDIDATES = {
    64: {
        "fwd": [K(128, 64, 8, 3), K(128, 64, 4, 4), K(128, 32, 8, 3), K(128, 128, 8, 2), K(64, 128, 4, 3)],
        "dq": [K(128, 64, 8, 3), K(128, 64, 8, 4), K(128, 32, 8, 3), K(64, 64, 4, 4)],
        "dkdv": [
            K(32, 64, 4, 3),
            K(32, 128, 8, 4),
            K(16, 128, 8, 4),
            K(32, 64, 4, 4),
            K(32, 64, 8, 3),
            K(16, 64, 4, 4),
        ],
    },
    128: {
        "fwd": [K(128, 64, 8, 3), K(128, 32, 8, 4), K(128, 32, 8, 3), K(64, 128, 4, 3), K(64, 64, 4, 4)],
        "dq": [K(128, 64, 8, 3), K(128, 64, 8, 4), K(128, 32, 8, 3), K(64, 64, 4, 4)],
        "dkdv": [
            K(32, 128, 8, 3),
            K(32, 128, 8, 4),
            K(16, 128, 8, 4),
            K(32, 64, 8, 3),
            K(16, 64, 4, 4),
            K(32, 64, 4, 2),
        ],
    },
}

Bench = Callable[..., float]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_bench(dry_run: bool) -> Bench:
    """Median milliseconds of ``fn()``: do_bench on CUDA, a few wall-clock runs in a dry run."""
    if dry_run:

        def bench(fn, grad_to_none=None):
            times = []
            for _ in range(2):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)

        return bench
    import triton.testing

    def bench(fn, grad_to_none=None):
        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")

    return bench


def causal_fwd_flops(b: int, h: int, t: int, d: int) -> float:
    return 4 * b * h * t * t * d / 2


def measure_ceilings(bench: Bench, device: str) -> dict:
    """The card's bf16 matmul rate and copy bandwidth, measured here (the floors' denominators)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    matmul_ms = bench(lambda: a @ a)
    src = torch.randn(2**28, device=device, dtype=torch.bfloat16)  # 512 MiB
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    return {
        "matmul_tflops": 2 * 8192**3 / matmul_ms / 1e9,
        "copy_gbps": 2 * src.numel() * 2 / copy_ms / 1e6,  # bytes read + written
    }


def sdpa_with(backend_name: str) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def attend(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return attend


def flex_for(t: int, device: str) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, t, t, device=device)
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def tune(q, k, v, dout, bench: Bench, dry_run: bool) -> tuple[FlashTritonConfig, dict]:
    """Time each kernel alone over its candidates; return the fastest configuration and every timing."""
    from attnlab.kernels.features import KernelFeatures
    from attnlab.kernels.launch import launch_backward_dkdv, launch_backward_dq, launch_forward

    head_dim = q.shape[-1]
    scale = head_dim**-0.5
    candidates = {name: cands[:2] if dry_run else cands for name, cands in CANDIDATES[head_dim].items()}
    timings: dict[str, list] = {}
    best = default_config(head_dim, q.device.type, q.dtype)

    def pick(kind: str, run: Callable[[KernelConfig], object]) -> KernelConfig:
        rows = []
        for config in candidates[kind]:
            try:
                ms = bench(lambda config=config: run(config))
            except Exception as error:  # e.g. out of shared memory: record and go on
                rows.append({"config": asdict(config), "error": f"{type(error).__name__}: {str(error)[:200]}"})
                continue
            rows.append({"config": asdict(config), "ms": ms})
        timings[kind] = rows
        ok = [(row["ms"], config) for row, config in zip(rows, candidates[kind], strict=True) if "ms" in row]
        return min(ok, key=lambda pair: pair[0])[1] if ok else getattr(best, kind)

    causal = KernelFeatures(causal=True)
    with torch.no_grad():
        best = replace(best, fwd=pick("fwd", lambda c: launch_forward(q, k, v, causal, scale, c)))
        out, lse = launch_forward(q, k, v, causal, scale, best.fwd)
        best = replace(best, dq=pick("dq", lambda c: launch_backward_dq(dout, q, k, v, out, lse, causal, scale, c)))
        _, delta = launch_backward_dq(dout, q, k, v, out, lse, causal, scale, best.dq)
        best = replace(
            best, dkdv=pick("dkdv", lambda c: launch_backward_dkdv(dout, q, k, v, lse, delta, causal, scale, c))
        )
    return best, timings


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def check_against_sdpa(attend, q, k, v, dout) -> dict:
    """Relative errors of out, dq, dk, dv against SDPA (default kernel choice) on the same bf16 inputs."""
    results = []
    for fn in (attend, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(dout)
        results.append([out.detach(), *(t.grad for t in leaves)])
    errors = {name: relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), *results, strict=True)}
    errors["finite"] = all(bool(torch.isfinite(t).all()) for t in results[0])
    return errors


def time_backend(attend, q, k, v, dout, bench: Bench) -> dict:
    with torch.no_grad():
        fwd_ms = bench(lambda: attend(q, k, v))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    fwd_bwd_ms = bench(lambda: attend(*leaves).backward(dout), grad_to_none=leaves)
    return {"fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms}


def add_rates(rows: list[dict]) -> None:
    for row in rows:
        if "fwd_ms" in row:
            flops = causal_fwd_flops(row["b"], row["h"], row["t"], row["head_dim"])
            row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
            row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9


def save(results: dict, out: Path | None) -> None:
    """Write what is measured so far (a run cut off by a time limit keeps its finished sizes)."""
    add_rates(results["rows"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "flash_bench.json").write_text(json.dumps(results, indent=1))


def run(args: argparse.Namespace) -> dict:
    device = "cpu" if args.dry_run else "cuda"
    bench = make_bench(args.dry_run)
    sizes, tokens, width = (DRY_SIZES, DRY_TOKENS, DRY_WIDTH) if args.dry_run else (SIZES, TOKENS, WIDTH)
    # Triton 3.6's interpreter gets bfloat16 dot products wrong, so the CPU dry run uses float16.
    dtype = torch.float16 if args.dry_run else torch.bfloat16
    info = {
        "torch": torch.__version__,
        "device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "dtype": str(dtype),
    }
    import triton

    info["triton"] = triton.__version__
    if not args.dry_run:
        info["ceilings"] = measure_ceilings(bench, device)
        log(f"ceilings: {info['ceilings']}")
    baselines = {"sdpa_flash": sdpa_with("FLASH_ATTENTION"), "sdpa_cudnn": sdpa_with("CUDNN_ATTENTION")}
    rows, checks, tuning, inputs = [], {}, {}, {}
    results = {"info": info, "rows": rows, "checks": checks, "tuning": tuning}
    for head_dim, t in sizes:
        b, h = tokens // t, width // head_dim
        gen = torch.Generator(device=device).manual_seed(t + head_dim)
        q, k, v, dout = (torch.randn(b, h, t, head_dim, device=device, generator=gen).to(dtype) for _ in range(4))
        inputs[(head_dim, t)] = (q, k, v, dout)
        config = default_config(head_dim, device, dtype)
        key = f"d{head_dim}_t{t}"
        if args.tune:
            config, tuning[key] = tune(q, k, v, dout, bench, args.dry_run)
            log(f"{key}: tuned {config}")
        attend = lambda q, k, v, config=config: flash_triton_attention(q, k, v, config=config)  # noqa: E731
        checks[key] = check_against_sdpa(attend, q, k, v, dout)
        log(f"{key}: flash_triton vs sdpa {checks[key]}")
        for name, fn in {"flash_triton": attend, **baselines}.items():
            try:
                times = time_backend(fn, q, k, v, dout, bench)
            except Exception as error:
                times = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append({"head_dim": head_dim, "t": t, "b": b, "h": h, "backend": name, **times})
            if name == "flash_triton":
                rows[-1]["config"] = asdict(config)
            log(f"{key}: {name} {times}")
        save(results, args.out)
    if not args.no_flex:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = 64  # one graph per shape and grad mode
        if hasattr(dynamo.config, "recompile_limit"):
            dynamo.config.recompile_limit = 64
        for head_dim, t in sizes:
            if time.monotonic() > args.deadline:
                log(f"flex: deadline reached, skipping d={head_dim} t={t}")
                continue
            q, k, v, dout = inputs[(head_dim, t)]
            try:
                times = time_backend(flex_for(t, device), q, k, v, dout, bench)
            except Exception as error:
                times = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append({"head_dim": head_dim, "t": t, "b": tokens // t, "h": width // head_dim, "backend": "flex"})
            rows[-1].update(times)
            log(f"d{head_dim}_t{t}: flex {times}")
            save(results, args.out)
    save(results, args.out)
    return results


def print_table(results: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    info = results["info"]
    table = Table(title=f"causal attention, {info['dtype']}, {info['device']}, torch {info['torch']}")
    for column in ("d", "t", "backend", "fwd ms", "fwd TF/s", "fwd+bwd ms", "fwd+bwd TF/s"):
        table.add_column(column, justify="right")
    for row in sorted(results["rows"], key=lambda r: (r["head_dim"], r["t"], r["backend"])):
        if "fwd_ms" not in row:
            table.add_row(str(row["head_dim"]), str(row["t"]), row["backend"], row["error"][:40], "", "", "")
            continue
        table.add_row(
            str(row["head_dim"]),
            str(row["t"]),
            row["backend"],
            f"{row['fwd_ms']:.3f}",
            f"{row['fwd_tflops']:.0f}",
            f"{row['fwd_bwd_ms']:.3f}",
            f"{row['fwd_bwd_tflops']:.0f}",
        )
    console = Console(width=100, record=True)
    console.print(table)
    return console.export_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--out", type=Path, help="write flash_bench.json and flash_bench.txt here")
    parser.add_argument("--tune", action="store_true", help="time a few block configurations per kernel")
    parser.add_argument("--no-flex", action="store_true", help="skip compiled FlexAttention")
    parser.add_argument("--flex-budget", type=float, default=240.0, help="seconds after start to stop adding flex")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (needs TRITON_INTERPRET=1)")
    args = parser.parse_args()
    args.deadline = time.monotonic() + args.flex_budget
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("needs CUDA (or --dry-run with TRITON_INTERPRET=1)")
    results = run(args)
    text = print_table(results)
    if args.out is not None:
        (args.out / "flash_bench.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
