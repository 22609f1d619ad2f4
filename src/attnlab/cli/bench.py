"""``attnlab bench``: time, check and compare every attention implementation; table, JSON, CSV, plots."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..bench import PRESETS, BenchConfig, Sweep, default_preset, resolve_device, run_benchmark
from ..bench.config import DEVICES, DTYPES, MODES
from ..bench.report import results_notes, results_table, write_results

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  attnlab bench                                   # quick preset on the CPU, notebook preset on a GPU
  attnlab bench --preset notebook --mode both --out results
  attnlab bench --impl sdpa,ch03,flex --sweep seq=256,512,1024 --mode forward --out sweep-results
  attnlab bench --device cuda --dtype bfloat16 --preset long --compile

presets: """ + "; ".join(
    f"{name}: batch {p.batch}, {p.seq_len} tokens, d_model {p.d_model}, {p.num_heads} heads ({p.description})"
    for name, p in PRESETS.items()
)


def _sweep(text: str) -> Sweep:
    try:
        return Sweep.parse(text)
    except ValueError as error:  # argparse shows ArgumentTypeError's message, not ValueError's
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark every implementation: time, FLOP rate vs measured peak, memory, accuracy",
        description=(
            "Benchmark the registered attention implementations: each gets the same weights, its output is "
            "checked against a float64 reference, then it is timed (median and interquartile spread) and its "
            "peak memory measured. Unsupported combinations get a row saying why. Sizes come from the preset "
            "unless given."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--impl", help="comma-separated implementation names (default: all registered)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda, else mps, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--preset", choices=tuple(PRESETS), help="default: quick on the CPU, notebook on GPUs")
    parser.add_argument("--batch", type=int, help="sequences per batch (default: from the preset)")
    parser.add_argument("--seq", type=int, dest="seq_len", help="tokens per sequence (default: from the preset)")
    parser.add_argument("--d-model", type=int, help="model width d_in = d_out (default: from the preset)")
    parser.add_argument("--heads", type=int, dest="num_heads", help="attention heads (default: from the preset)")
    parser.add_argument(
        "--mode",
        default="both",
        choices=(*MODES, "both"),
        help="forward (no autograd), backward (forward + backward of a scalar loss), or both (default)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd modules")
    parser.add_argument("--sweep", type=_sweep, help="vary one size: KEY=v1,v2,... (batch, seq, d-model, heads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and input (default: 0)")
    parser.add_argument("--min-run-time", type=float, help="seconds of timed calls per case (default: preset's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--out", help="write results.json, results.csv, bench.png (and sweep.png) here")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The validated config the options describe (preset sizes, overridden by explicit options)."""
    preset = args.preset or default_preset(resolve_device(args.device).type)
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("batch", "seq_len", "d_model", "num_heads", "min_run_time")
        if getattr(args, name) is not None
    }
    if args.impl is not None:
        overrides["impls"] = tuple(name.strip() for name in args.impl.split(",") if name.strip())
    return BenchConfig.from_preset(
        preset,
        device=args.device,
        dtype=args.dtype,
        modes=MODES if args.mode == "both" else (args.mode,),
        compile=args.compile,
        sweep=args.sweep,
        seed=args.seed,
        measure_memory=not args.no_memory,
        **overrides,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console()
    if not console.is_terminal:  # a log file or pipe: no terminal width to respect, keep rows on one line
        console = Console(width=160)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]bench[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("starting", total=None)

        def on_progress(done: int, total: int, description: str) -> None:
            progress.update(task, completed=done, total=total, description=description)

        result = run_benchmark(config, on_progress=on_progress)
    console.print(results_table(result))
    for note in results_notes(result):
        console.print(f"  {note}")
    console.print(
        f"torch {result.header.torch_version}, {result.header.num_threads} threads, "
        f"{result.header.elapsed_s:.0f} s; FLOPs: {result.header.flop_formula}"
    )
    if args.out:
        written = write_results(result, args.out)
        for path in written.paths:
            console.print(f"wrote {path}")
        for note in written.skipped:
            console.print(f"[yellow]skipped {note}[/]")
    return 0
