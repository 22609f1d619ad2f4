"""``attnlab check``: every implementation against the float64 reference, as a table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..check import FORWARD_TOL, GRAD_TOL, CheckConfig, CheckResult, run_check
from .options import comma_list

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="prove every implementation equal to a float64 reference (forward and gradients)",
        description=(
            "Give every implementation the same weights and input, and compare its output, input gradient "
            "and weight gradients (float32) with an independent float64 reference. Exits 1 if any fails."
        ),
        epilog="example: attnlab check --impl sdpa,einsum --seq-len 9 --d-in 24 --d-out 32 --heads 4",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = CheckConfig()
    parser.add_argument(
        "--impl", type=comma_list, help="comma-separated implementation names (None: every registered one)"
    )
    parser.add_argument("--batch", type=int, default=defaults.batch, help="sequences per batch")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per sequence")
    parser.add_argument("--d-in", type=int, default=defaults.d_in, help="input width")
    parser.add_argument("--d-out", type=int, default=defaults.d_out, help="output width (num_heads * head_dim)")
    parser.add_argument("--heads", type=int, default=defaults.num_heads, help="query heads")
    parser.add_argument("--no-qkv-bias", action="store_true", help="check without q/k/v biases")
    parser.add_argument(
        "--kv-heads", type=int, default=None, help="key/value heads (GQA; 1 = MQA; None: as many as --heads)"
    )
    parser.add_argument("--window", type=int, default=None, help="sliding window: keys a query sees, itself included")
    parser.add_argument("--softcap", type=float, default=None, help="softcap c on the scores: c * tanh(s / c)")
    parser.add_argument("--sinks", action="store_true", help="with learned attention sinks (random here)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights and input")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N, mps or auto")
    parser.set_defaults(func=run)


def _fmt(err: float | None) -> str:
    return "—" if err is None else f"{err:.1e}"


def run(args: argparse.Namespace) -> int:
    config = CheckConfig(  # bad sizes, names or device: ValueError before any work (memory: in run_check)
        impls=args.impl,
        batch=args.batch,
        seq_len=args.seq_len,
        d_in=args.d_in,
        d_out=args.d_out,
        num_heads=args.heads,
        qkv_bias=not args.no_qkv_bias,
        seed=args.seed,
        device=args.device,
        num_kv_heads=args.kv_heads,
        window=args.window,
        softcap=args.softcap,
        sinks=args.sinks,
    )
    console = Console()
    with console.status("checking implementations (FlexAttention compiles on first use) ...") as status:

        def progress(result: CheckResult) -> None:
            status.update(f"checked {result.name}: {result.status}")

        results = run_check(config, on_result=progress)
    options = {"kv heads": config.num_kv_heads, "window": config.window, "softcap": config.softcap}
    chosen = "".join(f", {label} {value}" for label, value in options.items() if value is not None)
    chosen += ", sinks" if config.sinks else ""
    table = Table(
        title=(
            f"float32 vs float64 reference: batch {config.batch}, {config.seq_len} tokens, d_in {config.d_in}, "
            f"d_out {config.d_out}, {config.num_heads} heads{chosen} "
            f"(tolerance: forward {FORWARD_TOL:.0e}, grads {GRAD_TOL:.0e})"
        )
    )
    for column in ("implementation", "forward err", "input grad err", "weight grad err", "status", "note"):
        table.add_column(column, justify="left" if column in ("implementation", "note") else "right")
    style = {"pass": "green", "fail": "bold red", "skipped": "yellow"}
    for r in results:
        table.add_row(
            r.name,
            _fmt(r.forward_err),
            _fmt(r.input_grad_err),
            _fmt(r.weight_grad_err),
            f"[{style[r.status]}]{r.status}[/]",
            r.note,
        )
    console.print(table)
    return 1 if any(r.status == "fail" for r in results) else 0
