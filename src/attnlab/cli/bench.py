"""``attnlab bench``: time, check and compare every attention implementation; table, JSON, CSV, plots."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..bench import PRESETS, AttentionVariant, BenchConfig, Sweep, default_preset, resolve_device, run_benchmark
from ..bench.config import DEVICES, DTYPES, MODES
from ..bench.decode_config import QUANT_MODES, DecodeBenchConfig
from ..bench.devices import describe_device, resolve_dtype
from ..bench.model_config import ModelBenchConfig
from ..bench.report import check_results_dir, results_notes, results_table, write_results
from ..bench.timing import MAX_MIN_RUN_TIME
from ..gpt import PRESETS as GPT_PRESETS
from ..gpt import GPTConfig
from ..gpt.bench import benchmark_model, model_bench_table
from ..outputs import check_output_dir
from .options import comma_list

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  attnlab bench                                   # quick preset on the CPU, notebook preset on a GPU
  attnlab bench --preset notebook --mode both --out results
  attnlab bench --impl sdpa,ch03,flex --sweep seq=256,512,1024 --mode forward --out sweep-results
  attnlab bench --device cuda --dtype bfloat16 --preset long --compile
  attnlab bench --impl flash_torch,sdpa_mask --seq 4096 --heads 8 --kv-heads 2 --window 256 --mode forward
  attnlab bench --model gpt2 --impl sdpa,ch03,wrapper --prompt-len 128 --new-tokens 32
  attnlab bench --model gpt2 --decode --impl sdpa --quant none,int8 --context 128,512,1000
  attnlab bench --model gpt2 --decode --decoder --compile --impl sdpa,flash_torch --quant none,int8_dynamic

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
    parser.add_argument(
        "--impl", type=comma_list, help="comma-separated implementation names (default: all registered)"
    )
    parser.add_argument("--device", default=BenchConfig.device, choices=DEVICES, help="auto: cuda, else mps, else cpu")
    parser.add_argument("--dtype", default=BenchConfig.dtype, choices=DTYPES)
    parser.add_argument("--preset", choices=tuple(PRESETS), help="default: quick on the CPU, notebook on GPUs")
    parser.add_argument("--batch", type=int, help="sequences per batch (default: from the preset)")
    parser.add_argument("--seq", type=int, dest="seq_len", help="tokens per sequence (default: from the preset)")
    parser.add_argument("--d-model", type=int, help="model width d_in = d_out (default: from the preset)")
    parser.add_argument("--heads", type=int, dest="num_heads", help="attention heads (default: from the preset)")
    parser.add_argument(
        "--mode",
        default=None,
        choices=(*MODES, "both"),
        help="forward (no autograd), backward (forward + backward of a scalar loss), or both (default)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile'd modules (with --decode --decoder: compile the decode step)",
    )
    parser.add_argument("--sweep", type=_sweep, help="vary one size: KEY=v1,v2,... (batch, seq, d-model, heads)")
    parser.add_argument(
        "--seed",
        type=int,
        default=BenchConfig.seed,
        help=f"seed of the weights and input (default: {BenchConfig.seed})",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        help=(
            f"seconds of timed calls per case, at most {MAX_MIN_RUN_TIME:g} (default: the preset's; "
            f"{ModelBenchConfig.min_run_time} with --model)"
        ),
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    variant = parser.add_argument_group("attention variant (every case; FLOPs count only the pairs that may meet)")
    variant.add_argument("--kv-heads", type=int, help="key/value heads (GQA; 1 is MQA; default: as many as --heads)")
    variant.add_argument("--window", type=int, help="sliding window: each query sees its last W positions")
    variant.add_argument("--softcap", type=float, help="soft-cap the scores at C (C * tanh(s / C), Gemma 2)")
    variant.add_argument("--sinks", action="store_true", help="one learned sink logit per head (gpt-oss)")
    variant.add_argument("--packed-len", type=int, help="pack sequences of N tokens into each row (no cross-talk)")
    parser.add_argument("--out", help="write results.json, results.csv, bench.png (and sweep.png) here")
    model = parser.add_argument_group("whole-model benchmark (prefill and decode tokens/s of the GPT model)")
    model.add_argument("--model", choices=tuple(GPT_PRESETS), help="benchmark this GPT-2 size instead of one layer")
    model.add_argument("--layers", type=int, help="with --model: override the number of layers (smaller runs)")
    defaults = ModelBenchConfig  # its field defaults, read as class attributes
    model.add_argument("--prompt-len", type=int, help=f"with --model: prompt tokens (default: {defaults.prompt_len})")
    model.add_argument("--new-tokens", type=int, help=f"with --model: decoded tokens (default: {defaults.new_tokens})")
    decode = parser.add_argument_group(
        "decode benchmark (with --model --decode: tokens/s and the share of the measured memory bandwidth)"
    )
    decode.add_argument(
        "--decode",
        action="store_true",
        help="time decode steps against a KV cache of each --context length, next to transformers' generate",
    )
    decoding = DecodeBenchConfig  # its field defaults, read as class attributes
    decode.add_argument(
        "--quant",
        type=comma_list,
        help=f"weight formats to compare, from {', '.join(QUANT_MODES)} (default: {','.join(decoding.quants)})",
    )
    decode.add_argument(
        "--context",
        type=comma_list,
        help=f"prompt lengths to decode after (default: {','.join(map(str, decoding.contexts))})",
    )
    decode.add_argument("--no-reference", action="store_true", help="skip the transformers generate row")
    decode.add_argument(
        "--decoder",
        action="store_true",
        help="decode with attnlab.models.Decoder (same checkpoint) instead of attnlab.gpt.GPTModel; --impl then "
        "names attention backends, and --compile compiles its decode step on a static cache",
    )
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
        overrides["impls"] = args.impl
    variant = AttentionVariant(
        num_kv_heads=args.kv_heads,
        window=args.window,
        softcap=args.softcap,
        sinks=args.sinks,
        packed_len=args.packed_len,
    )
    return BenchConfig.from_preset(
        preset,
        variant=variant,
        device=args.device,
        dtype=args.dtype,
        modes=MODES if args.mode in (None, "both") else (args.mode,),
        compile=args.compile,
        sweep=args.sweep,
        seed=args.seed,
        measure_memory=not args.no_memory,
        **overrides,
    )


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # a log file or pipe: no terminal width to respect, keep rows on one line
        console = Console(width=160)
    return console


class _LineProgress:
    """Progress for a log file or pipe, where rich's live bar shows nothing: one line per new step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._last = ""

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def add_task(self, description: str, total: int | None = None) -> int:
        return 0

    def update(self, task: int, *, completed: int, total: int, description: str) -> None:
        if description != self._last and completed < total:
            self._last = description
            self.console.print(f"bench [{completed}/{total}] {description}", highlight=False, markup=False)


def _progress(console: Console) -> Progress | _LineProgress:
    if not console.is_terminal:
        return _LineProgress(console)
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]bench[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )


def _refuse_layer_options(args: argparse.Namespace, hint: str, allowed: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming the per-layer options given (but ``allowed``): they do not apply to a whole-model run."""
    layer_only = {"--preset": args.preset, "--sweep": args.sweep, "--seq": args.seq_len, "--heads": args.num_heads}
    layer_only |= {"--d-model": args.d_model, "--compile": args.compile or None, "--no-memory": args.no_memory or None}
    layer_only |= {"--kv-heads": args.kv_heads, "--window": args.window, "--softcap": args.softcap}
    layer_only |= {"--sinks": args.sinks or None, "--packed-len": args.packed_len, "--mode": args.mode}
    given = [flag for flag, value in layer_only.items() if value is not None and flag not in allowed]
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise ValueError(f"{', '.join(given)} {verb} not apply with --model (use {hint})")


def _refuse_decode_options(args: argparse.Namespace, where: str) -> None:
    decode_only = {"--quant": args.quant, "--context": args.context, "--no-reference": args.no_reference or None}
    decode_only |= {"--decoder": args.decoder or None}
    if given := [flag for flag, value in decode_only.items() if value is not None]:
        raise ValueError(f"{', '.join(given)} only apply with --decode{where}")


def _contexts(values: tuple[str, ...]) -> tuple[int, ...]:
    """``("128", "512")`` -> ``(128, 512)``: syntax only (the config checks the values)."""
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ValueError(f"--context takes comma-separated integers, got {','.join(values)!r}") from None


def model_config_from_args(args: argparse.Namespace) -> ModelBenchConfig:
    """The validated whole-model run the options describe (defaults from :class:`ModelBenchConfig`)."""
    _refuse_layer_options(args, "--prompt-len, --new-tokens, --layers")
    _refuse_decode_options(args, "")
    overrides = {} if args.layers is None else {"n_layers": args.layers}
    options = {"impls": args.impl, "batch": args.batch, "prompt_len": args.prompt_len}
    options |= {"new_tokens": args.new_tokens, "min_run_time": args.min_run_time}
    return ModelBenchConfig(
        model=GPTConfig.preset(args.model, **overrides),
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        **{name: value for name, value in options.items() if value is not None},
    )


def decode_config_from_args(args: argparse.Namespace) -> DecodeBenchConfig:
    """The validated decode run the options describe (defaults from :class:`DecodeBenchConfig`)."""
    _refuse_layer_options(args, "--context, --new-tokens, --quant, --layers", allowed=("--compile",))
    if args.prompt_len is not None:
        raise ValueError(
            "--prompt-len does not apply with --decode (use --context: the prompt lengths to decode after)"
        )
    overrides = {} if args.layers is None else {"n_layers": args.layers}
    options = {"impls": args.impl, "quants": args.quant, "batch": args.batch, "new_tokens": args.new_tokens}
    options |= {
        "min_run_time": args.min_run_time,
        "contexts": None if args.context is None else _contexts(args.context),
    }
    return DecodeBenchConfig(
        model=GPTConfig.preset(args.model, **overrides),
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        reference=not args.no_reference,
        decoder=args.decoder,
        compile=args.compile,
        **{name: value for name, value in options.items() if value is not None},
    )


def run_decode(args: argparse.Namespace) -> int:
    """``--model --decode``: decode tokens/s and share of memory bandwidth, per context length."""
    from ..bench.decode import decode_table  # the decode modules import the gpt package: loaded when used
    from ..bench.decode_run import run_decode_bench

    config = decode_config_from_args(args)
    if args.out is not None:
        check_output_dir(args.out, ("decode_results.json",))  # before the run, not after it
    config.require_packages()
    config.require_memory()
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("starting", total=None)
        result = run_decode_bench(
            config,
            on_progress=lambda done, total, text: progress.update(task, completed=done, total=total, description=text),
        )
    header = result.header
    layers = f", {config.model.n_layers} layers" if args.layers is not None else ""
    title = (
        f"{args.model}{layers} ({header.model_class}): decode {config.new_tokens} tokens after each context, "
        f"batch {config.batch}, {config.dtype}"
    )
    console.print(decode_table(result.rows, title=title))
    versions = ", ".join(f"{name} {version}" for name, version in header.versions.items())
    before, after = header.bandwidth_samples_gb_per_s
    console.print(
        f"{header.device_name}, {header.num_threads} threads; {versions}\n"
        f"memory bandwidth: {header.bandwidth_gb_per_s:.1f} GB/s (torch.sum over "
        f"{header.bandwidth_probe_bytes / 2**20:.0f} MiB; {before:.1f} before, {after:.1f} after the rows); "
        f"load average {header.load_average[0]:.1f} before, {header.load_average[1]:.1f} after; "
        f"{header.elapsed_s:.0f} s",
        highlight=False,
    )
    if args.out is not None:
        path = Path(args.out)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"header": asdict(header), "rows": [asdict(row) for row in result.rows]}
        (path / "decode_results.json").write_text(json.dumps(payload, indent=2, default=str))
        console.print(f"wrote {path / 'decode_results.json'}")
    return 0


def run_model(args: argparse.Namespace) -> int:
    """``--model``: prefill and decode tokens/s of the whole GPT model on each implementation."""
    config = model_config_from_args(args)
    if args.out is not None:
        check_output_dir(args.out, ("model_results.json",))  # before the run, not after it
    config.require_memory()
    device = resolve_device(config.device)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("starting", total=None)
        rows = benchmark_model(
            config.model,
            list(config.impl_names),
            batch=config.batch,
            prompt_len=config.prompt_len,
            new_tokens=config.new_tokens,
            device=device,
            dtype=resolve_dtype(config.dtype),
            min_run_time=config.min_run_time,
            seed=config.seed,
            on_progress=lambda done, total, text: progress.update(task, completed=done, total=total, description=text),
        )
    layers = f", {config.model.n_layers} layers" if args.layers is not None else ""
    title = f"{args.model}{layers}: prefill {config.prompt_len} tokens, decode {config.new_tokens} tokens"
    console.print(model_bench_table(rows, title=f"{title}, batch {config.batch}, {config.dtype}"))
    if args.out is not None:
        path = Path(args.out)
        path.mkdir(parents=True, exist_ok=True)
        header = {
            "model": args.model,
            "config": config.model.to_dict(),
            "torch_version": torch.__version__,
            "device": str(device),
            "device_name": describe_device(device),
            "dtype": config.dtype,
            "batch": config.batch,
            "prompt_len": config.prompt_len,
            "new_tokens": config.new_tokens,
            "min_run_time": config.min_run_time,
            "seed": config.seed,
            "num_threads": torch.get_num_threads(),
        }
        payload = {"header": header, "rows": [asdict(row) for row in rows]}
        (path / "model_results.json").write_text(json.dumps(payload, indent=2, default=str))
        console.print(f"wrote {path / 'model_results.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        return run_decode(args) if args.decode else run_model(args)
    model_only = {"--layers": args.layers, "--prompt-len": args.prompt_len, "--new-tokens": args.new_tokens}
    model_only |= {"--decode": args.decode or None}
    if given := [flag for flag, value in model_only.items() if value is not None]:
        raise ValueError(f"{', '.join(given)} only apply with --model")
    _refuse_decode_options(args, " --model")
    config = config_from_args(args)
    if args.out is not None:
        check_results_dir(args.out)  # before the run, not after it
    console = _console()
    progress = _progress(console)
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
    if args.out is not None:
        written = write_results(result, args.out)
        for path in written.paths:
            console.print(f"wrote {path}")
        for note in written.skipped:
            console.print(f"[yellow]skipped {note}[/]")
    return 0
