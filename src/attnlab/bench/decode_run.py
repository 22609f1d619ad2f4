"""One decode benchmark run from a :class:`.decode_config.DecodeBenchConfig`: checkpoint, models, bandwidth, rows.

1. With ``reference`` or ``decoder``: a random checkpoint of the model's shape, written by transformers into a temporary
   directory (:func:`attnlab.gpt.hf_random.save_random_gpt2`); every attnlab model and transformers' model
   load it, so all rows run the same weights. Without: one set of random attnlab weights.
2. One model per (implementation, weight format), quantized with :func:`attnlab.quantize.quantize_weights`:
   :class:`attnlab.gpt.GPTModel`, or with ``decoder`` :class:`attnlab.models.Decoder` (both read GPT-2
   checkpoints), each wrapped as a :class:`.decode.DecodeTarget` -- all the bench needs of a model.
3. The memory bandwidth (:func:`.bandwidth.measure_bandwidth`) before and after the rows; the fractions
   use the larger of the two, so a fraction is never flattered by a slow bandwidth sample.
4. The rows (:func:`.decode.benchmark_decode`), context lengths in the outer loop so that every target is
   timed under the same machine load at each length.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..gpt import GPTModel
from ..gpt.decode_target import GPTDecodeTarget
from ..gpt.hf_random import save_random_gpt2
from ..gpt.state import export_state, load_state
from ..models import from_hf
from ..models.decode_target import DecoderDecodeTarget
from ..quantize import quantize_weights
from .bandwidth import measure_bandwidth
from .decode import DecodeRow, DecodeTarget, ProgressCallback, benchmark_decode, with_bandwidth
from .decode_config import DecodeBenchConfig
from .devices import describe_device, resolve_device, resolve_dtype
from .hf_generate import GenerateReference
from .timing import timing_method

__all__ = ["DecodeHeader", "DecodeResult", "run_decode_bench"]


@dataclass(frozen=True)
class DecodeHeader:
    """The machine, versions, method and measured bandwidth: what a reader needs to trust the rows."""

    model: dict[str, Any]
    model_class: str  # attnlab.gpt.GPTModel or attnlab.models.Decoder
    device: str
    device_name: str
    dtype: str
    batch: int
    new_tokens: int
    num_threads: int
    versions: dict[str, str]
    bandwidth_gb_per_s: float  # the larger of the two samples; fractions are relative to it
    bandwidth_samples_gb_per_s: tuple[float, float]  # before and after the rows
    bandwidth_probe_bytes: int
    timing_method: str
    load_average: tuple[float, float]  # 1-minute load before and after (CPU runs share the machine)
    elapsed_s: float
    python: str = field(default_factory=platform.python_version)


@dataclass(frozen=True)
class DecodeResult:
    header: DecodeHeader
    rows: list[DecodeRow]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpt_models(config: DecodeBenchConfig, checkpoint: Path | None) -> list[tuple[str, str, GPTModel]]:
    """One attnlab GPT model per (implementation, weight format), same weights, on the run's device/dtype."""
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    model_config = replace(config.model, dropout=0.0)
    state = None
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random state untouched
            torch.manual_seed(config.seed)
            state = export_state(GPTModel(model_config, attn_impl="fused_qkv"))
    models = []
    for impl in config.impls:
        for quant in config.quants:
            if checkpoint is not None:
                model = GPTModel.from_hf(checkpoint, attn_impl=impl, dropout=0.0)
            else:
                with torch.random.fork_rng(devices=[]):  # its random init is overwritten
                    model = GPTModel(model_config, attn_impl=impl)
                load_state(model, state)
            model = model.to(device=device, dtype=dtype).eval()
            if quant != "none":
                quantize_weights(model, quant)
            models.append((impl, quant, model))
    return models


def _decoder_models(config: DecodeBenchConfig, checkpoint: Path) -> list[tuple[str, str, nn.Module]]:
    """One :class:`attnlab.models.Decoder` per (attention backend, weight format), loaded from ``checkpoint``."""
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    models = []
    for impl in config.impls:
        for quant in config.quants:
            model = from_hf(checkpoint, attn_impl=impl, dtype=dtype, device=device)
            if quant != "none":
                quantize_weights(model, quant)
            models.append((impl, quant, model))
    return models


def _targets(config: DecodeBenchConfig, checkpoint: Path | None) -> list[tuple[str, str, DecodeTarget]]:
    max_tokens = max(config.contexts) + config.new_tokens
    if not config.decoder:
        return [
            (impl, quant, GPTDecodeTarget(model, max_tokens)) for impl, quant, model in _gpt_models(config, checkpoint)
        ]
    label = " (compiled)" if config.compile else ""
    return [
        (impl + label, quant, DecoderDecodeTarget(model, max_tokens, compile=config.compile))
        for impl, quant, model in _decoder_models(config, checkpoint)
    ]


def run_decode_bench(config: DecodeBenchConfig, on_progress: ProgressCallback | None = None) -> DecodeResult:
    """Measure ``config``'s rows (see the module docstring); the config was validated when built."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="attnlab-decode-") as directory:
        checkpoint = save_random_gpt2(config.model, directory, seed=config.seed) if config.needs_checkpoint else None
        targets = _targets(config, checkpoint)
        reference = GenerateReference(checkpoint, device, resolve_dtype(config.dtype)) if config.reference else None
    before = measure_bandwidth(device, num_bytes=config.probe_bytes, min_run_time=config.min_run_time)
    rows = benchmark_decode(
        targets,
        config.contexts,
        vocab_size=config.model.vocab_size,
        batch=config.batch,
        new_tokens=config.new_tokens,
        device=device,
        reference=reference,
        min_run_time=config.min_run_time,
        seed=config.seed,
        on_progress=on_progress,
    )
    after = measure_bandwidth(device, num_bytes=config.probe_bytes, min_run_time=config.min_run_time)
    best = max(before, after, key=lambda sample: sample.bytes_per_s)
    rows = with_bandwidth(rows, best)
    header = DecodeHeader(
        model=config.model.to_dict(),
        model_class="attnlab.models.Decoder" if config.decoder else "attnlab.gpt.GPTModel",
        device=str(device),
        device_name=describe_device(device),
        dtype=config.dtype,
        batch=config.batch,
        new_tokens=config.new_tokens,
        num_threads=torch.get_num_threads(),
        versions={name: _version(name) for name in ("torch", "transformers", "torchao")},
        bandwidth_gb_per_s=best.gb_per_s,
        bandwidth_samples_gb_per_s=(before.gb_per_s, after.gb_per_s),
        bandwidth_probe_bytes=best.num_bytes,
        timing_method=timing_method(device),
        load_average=(load_before, os.getloadavg()[0]),
        elapsed_s=time.perf_counter() - started,
    )
    return DecodeResult(header, rows)
