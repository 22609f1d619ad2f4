"""``attnlab check``: every implementation against the float64 reference, as a table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..check import FORWARD_TOL, GRAD_TOL, CheckResult, check_implementations
from ..implementations import IMPLEMENTATIONS

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
    parser.add_argument("--impl", default=",".join(IMPLEMENTATIONS), help="comma-separated implementation names")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=7)
    parser.add_argument("--d-in", type=int, default=32)
    parser.add_argument("--d-out", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--no-qkv-bias", action="store_true", help="check without q/k/v biases")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA; 1 = MQA); default: --heads")
    parser.add_argument("--window", type=int, default=None, help="sliding window: keys a query sees, itself included")
    parser.add_argument("--softcap", type=float, default=None, help="softcap c on the scores: c * tanh(s / c)")
    parser.add_argument("--sinks", action="store_true", help="with learned attention sinks (random here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def _fmt(err: float | None) -> str:
    return "—" if err is None else f"{err:.1e}"


def run(args: argparse.Namespace) -> int:
    console = Console()
    names = [n.strip() for n in args.impl.split(",") if n.strip()]
    with console.status("checking implementations (FlexAttention compiles on first use) ...") as status:

        def progress(result: CheckResult) -> None:
            status.update(f"checked {result.name}: {result.status}")

        results = check_implementations(
            names,
            batch=args.batch,
            seq_len=args.seq_len,
            d_in=args.d_in,
            d_out=args.d_out,
            num_heads=args.heads,
            qkv_bias=not args.no_qkv_bias,
            seed=args.seed,
            device=args.device,
            on_result=progress,
            num_kv_heads=args.kv_heads,
            window=args.window,
            softcap=args.softcap,
            sinks=args.sinks,
        )
    options = {"kv heads": args.kv_heads, "window": args.window, "softcap": args.softcap}
    chosen = "".join(f", {label} {value}" for label, value in options.items() if value is not None)
    chosen += ", sinks" if args.sinks else ""
    table = Table(
        title=(
            f"float32 vs float64 reference: batch {args.batch}, {args.seq_len} tokens, d_in {args.d_in}, "
            f"d_out {args.d_out}, {args.heads} heads{chosen} (tolerance: forward {FORWARD_TOL:.0e}, "
            f"grads {GRAD_TOL:.0e})"
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
