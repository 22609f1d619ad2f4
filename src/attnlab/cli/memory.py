"""``attnlab memory``: a model's KV-cache bytes per kind of layer, for a context length, batch and dtype."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..bench.report import format_bytes
from ..models.memory import KV_DTYPES, kv_cache_bytes, read_model_config

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="KV-cache bytes of a Hugging Face model config, per kind of layer (full, sliding window, latent)",
        description=(
            "Count the KV cache a model allocates for BATCH sequences of CONTEXT tokens: the model is built on "
            "PyTorch's meta device (shapes, no memory), one decoding step makes every layer cache allocate its "
            "buffers, and their sizes are summed per kind of layer: full attention (every position), sliding "
            "window w (w positions plus one spare slot for padding writes), latent (MLA). Nothing is allocated "
            "and no weights are read."
        ),
        epilog=(
            "examples:\n"
            "  attnlab memory --model ./Llama-3.1-8B --context 8192 --batch 4 --dtype bfloat16\n"
            "  attnlab memory --model ./gemma-2-9b/config.json --context 8192"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory or its config.json")
    parser.add_argument("--context", type=int, default=None, help="tokens per sequence (default: the model's context)")
    parser.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    parser.add_argument("--dtype", default="bfloat16", choices=KV_DTYPES, help="cache dtype (default bfloat16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = read_model_config(args.model)
    report = kv_cache_bytes(config, args.context, args.batch, KV_DTYPES[args.dtype])
    table = Table(
        title=(
            f"KV cache of {args.model} ({config.model_type}): batch {report.batch}, context {report.context}, "
            f"{args.dtype}"
        )
    )
    for column in ("layers", "count", "positions held", "bytes", "size", "bytes per token"):
        table.add_column(column, justify="left" if column == "layers" else "right")
    for row in report.rows:
        table.add_row(
            row.label,
            str(row.layers),
            f"{row.slots:,}",
            f"{row.nbytes:,}",
            format_bytes(row.nbytes),
            f"{row.bytes_per_token:,}",
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(row.layers for row in report.rows)),
        "",
        f"{report.total_bytes:,}",
        format_bytes(report.total_bytes),
        f"{report.bytes_per_token:,.1f}",
    )
    Console().print(table)
    return 0
