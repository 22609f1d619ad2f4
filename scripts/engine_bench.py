#!/usr/bin/env python3
"""Serving throughput: N requests through attnlab.serving.Engine at once, against the same requests one by one.

A random-weight decoder of GPT-2-small shape (12 layers, d_model 768, 12 heads, float32; ``--small`` for a
4-layer d_model 256 model that runs in seconds) gets ``--requests`` prompts of random lengths, each asking for
``--new-tokens`` tokens (greedy). The engine runs them with ``max_batch = requests`` (continuous batching: one
forward pass decodes a token for every running request) and with ``max_batch = 1`` (one request after another,
same engine, same paged cache). Both runs are timed in the same process with ``torch.utils.benchmark`` and must
produce the same tokens. Reported: total new tokens per second of each run and the ratio.

    PYTHONPATH=src python3 scripts/engine_bench.py
    PYTHONPATH=src python3 scripts/engine_bench.py --small --requests 16 --new-tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch.utils import benchmark

from attnlab.gpt.options import GenerationOptions
from attnlab.models import Decoder, DecoderConfig
from attnlab.serving import Engine


def gpt2_shaped(small: bool) -> DecoderConfig:
    width, layers, heads = (256, 4, 4) if small else (768, 12, 12)
    return DecoderConfig(
        vocab_size=50257, d_model=width, n_layers=layers, num_heads=heads, d_ff=4 * width, context_length=1024,
        norm="layernorm", norm_eps=1e-5, ffn="gelu", ffn_bias=True, positions="learned", rope=None,
        qkv_bias=True, out_bias=True, tie_embeddings=True, model_type="gpt2",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--attn-impl", default="flash_torch")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="a 4-layer, d_model 256 model instead of GPT-2 small")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Decoder(gpt2_shaped(args.small), args.attn_impl).eval()
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(16, 65, (args.requests,), generator=generator).tolist()
    prompts = [torch.randint(0, 50257, (n,), generator=generator).tolist() for n in lengths]
    options = GenerationOptions(max_new_tokens=args.new_tokens)
    rows, outputs = [], {}
    # A pool sized to the work (every request's prompt and answer at once), the same for both runs.
    num_blocks = args.requests * -(-(64 + args.new_tokens) // args.block_size)
    Engine(model, block_size=args.block_size, num_blocks=num_blocks).generate(prompts[:2], options)  # warm-up
    for max_batch in track([args.requests, 1], description="engine runs", transient=True):

        def run(max_batch: int = max_batch) -> None:
            outputs[max_batch] = Engine(
                model, block_size=args.block_size, num_blocks=num_blocks, max_batch=max_batch
            ).generate(prompts, options)

        timer = benchmark.Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())
        seconds = timer.timeit(1).median
        rows.append((max_batch, seconds, args.requests * args.new_tokens / seconds))
    if outputs[1] != outputs[args.requests]:
        raise SystemExit("the batched and one-by-one runs made different tokens")
    title = (
        f"Engine, {args.requests} requests x {args.new_tokens} new tokens, prompts 16-64, {args.attn_impl}, float32, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    if args.markdown:
        print(f"{title}\n\n| max_batch | seconds | new tokens/s |\n|---:|---:|---:|")
        for max_batch, seconds, rate in rows:
            print(f"| {max_batch} | {seconds:.2f} | {rate:.1f} |")
        print(f"\nthroughput ratio: {rows[0][2] / rows[1][2]:.2f}x")
        return
    table = Table(title=title)
    for column in ("max_batch", "seconds", "new tokens/s"):
        table.add_column(column, justify="right")
    for max_batch, seconds, rate in rows:
        table.add_row(str(max_batch), f"{seconds:.2f}", f"{rate:.1f}")
    console = Console()
    console.print(table)
    console.print(
        f"throughput ratio (batched / one by one): {rows[0][2] / rows[1][2]:.2f}x  (cpu count {os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
