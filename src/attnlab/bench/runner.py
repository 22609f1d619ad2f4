"""Run a benchmark: every requested implementation, mode and size, measured and checked, one row each.

Before any work, each case's memory is estimated (:mod:`attnlab.memory_guard`): a case that cannot fit in
the memory free now becomes an ``oom`` row naming the estimate, without running (on the CPU it would end
the whole process); when no case fits, the run is refused with a ``ValueError``.

For each case: skip with a row saying why if the implementation cannot run here (registry
capabilities); otherwise build it with the seed's weights, run it once (warm-up; compilation for
compiled cases) and compare its output with the float64 reference, refuse to time it if over
tolerance, time it (:mod:`~attnlab.bench.timing`), then measure its peak memory
(:mod:`~attnlab.bench.memory`). Out-of-memory and other errors become rows; the run goes on.
The device's peak FLOP rate is measured first, in the same run and dtype; a row faster than that "peak"
gets no share of peak (it would read above 100 %) but a note, and the header a warning.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial

import torch

from ..memory_guard import available_memory, memory_shortfall
from ..registry import get_implementation
from .accuracy import TOLERANCES, output_error, reference_prefix
from .attention_case import AttentionCase, case_inputs, make_step, prepare
from .config import BenchConfig
from .devices import describe_device, is_out_of_memory, resolve_device, resolve_dtype, synchronize
from .flops import FLOP_FORMULA
from .memory import MemoryMeter, WorkloadError, memory_meter
from .peak import DevicePeak, choose_matmul_size, measure_peak
from .results import BenchHeader, BenchResult, BenchRow
from .timing import time_callable, timing_method

__all__ = ["ProgressCallback", "rank_rows", "run_benchmark"]

#: ``on_progress(done, total, description)``: ``done`` of ``total`` steps finished, ``description`` says
#: what runs now.
ProgressCallback = Callable[[int, int, str], None]


def rank_rows(rows: list[BenchRow]) -> None:
    """Set each ok row's ``speedup``: the slowest ok median of its mode and size over its own median."""
    groups: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        if row.status == "ok" and row.median_ms is not None:
            groups.setdefault((row.mode, *row.size_key()), []).append(row)
    for group in groups.values():
        slowest = max(row.median_ms for row in group)
        for row in group:
            row.speedup = slowest / row.median_ms


def _cases(config: BenchConfig, device: torch.device) -> list[AttentionCase]:
    variants = (False, True) if config.compile else (False,)
    return [
        AttentionCase(
            impl=impl,
            mode=mode,
            compiled=compiled,
            device=str(device),
            dtype=config.dtype,
            batch=point.batch,
            seq_len=point.seq_len,
            d_model=point.d_model,
            num_heads=point.num_heads,
            seed=config.seed,
            variant=config.variant,
        )
        for point in config.points()
        for mode in config.modes
        for impl in config.impl_names
        for compiled in variants
    ]


class _CaseRunner:
    """Runs cases one at a time, sharing the float64 reference of each size and the memory meter."""

    def __init__(
        self,
        config: BenchConfig,
        device: torch.device,
        peak: DevicePeak,
        meter: MemoryMeter,
        too_large: dict[AttentionCase, str],
    ) -> None:
        self.config = config
        self.device = device
        self.peak = peak
        self.meter = meter
        self.too_large = too_large  # case -> why it cannot fit in memory
        self.tolerance = TOLERANCES[config.dtype]
        self._references: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def _reference(self, case: AttentionCase) -> torch.Tensor:
        key = (case.batch, case.seq_len, case.d_model, case.num_heads)
        if key not in self._references:
            weights, x = case_inputs(case)
            self._references[key] = reference_prefix(
                x, weights, case.num_heads, self.config.accuracy_tokens, case.variant
            )
        return self._references[key]

    def run(self, case: AttentionCase) -> BenchRow:
        # impl, mode, sizes... (the variant is the run's, in the header)
        identity = {name: value for name, value in asdict(case).items() if name not in ("seed", "variant")}
        row = BenchRow(**identity, status="ok", flops=case.flops, tolerance=self.tolerance)
        capabilities = get_implementation(case.impl).capabilities
        if (reason := capabilities.unavailable_reason()) is not None:
            row.status, row.note = "unavailable", reason
            return row
        features = case.variant.features(case.num_heads)
        if (reason := capabilities.unsupported_reason(self.device.type, case.mode, features)) is not None:
            row.status, row.note = "unsupported", reason
            return row
        if case.variant.packed_len is not None and not get_implementation(case.impl).supports_packed_sequences():
            row.status, row.note = "unsupported", "cannot pack sequences (seq_lens)"
            return row
        if (reason := self.too_large.get(case)) is not None:
            row.status, row.note = "oom", f"not run: {reason}"
            return row
        try:
            self._measure(case, row)
        except Exception as error:  # one case failing must not end the run: it becomes a row
            row.status = "oom" if is_out_of_memory(error) else "error"
            row.note = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            timed = ("median_ms", "p25_ms", "p75_ms", "iqr_ms", "num_samples", "gflops", "peak_fraction", "compile_s")
            for name in timed:
                setattr(row, name, None)
        if row.status != "ok" and self.device.type == "cuda":
            torch.cuda.empty_cache()  # out here, the failed case's tensors are no longer referenced
        return row

    def _measure(self, case: AttentionCase, row: BenchRow) -> None:
        prepared = prepare(case)
        start = time.perf_counter()
        out = prepared.step()  # warm-up (and compilation); its output is checked
        synchronize(self.device)
        first_call_s = time.perf_counter() - start
        row.max_abs_err = output_error(out, self._reference(case))
        del out
        if not math.isfinite(row.max_abs_err) or row.max_abs_err > self.tolerance:
            row.status = "failed"
            row.note = f"output error {row.max_abs_err:.1e} exceeds the {case.dtype} tolerance {self.tolerance:.0e}"
            return
        timing = time_callable(
            prepared.step, self.device, min_run_time=self.config.min_run_time, min_samples=self.config.min_samples
        )
        del prepared  # free the timed module before the memory measurement builds its own
        row.median_ms, row.p25_ms, row.p75_ms = 1e3 * timing.median_s, 1e3 * timing.p25_s, 1e3 * timing.p75_s
        row.iqr_ms = 1e3 * timing.iqr_s
        row.num_samples = timing.num_samples
        row.gflops = case.flops / timing.median_s / 1e9
        if row.gflops <= self.peak.gflops:
            row.peak_fraction = row.gflops / self.peak.gflops
        else:  # faster than the "peak": the matmul that measured it is no upper bound here
            row.note = (
                f"share of peak not shown: {row.gflops:.1f} GFLOP/s is above the measured peak "
                f"({self.peak.gflops:.1f} GFLOP/s), so the peak measurement is unreliable for {case.dtype} here"
            )
        if case.compiled:
            row.compile_s = max(0.0, first_call_s - timing.median_s)
        try:
            row.peak_mem_bytes = self.meter.measure(partial(make_step, case)).peak_bytes
        except WorkloadError as error:  # timed fine here, failed in the memory worker
            if error.out_of_memory:
                row.status = "oom"
            row.note = f"memory not measured: {error}"[:300]


def _peak_warning(rows: list[BenchRow], peak: DevicePeak) -> str | None:
    faster = [row.label for row in rows if row.gflops is not None and row.peak_fraction is None]
    if not faster:
        return None
    return (
        f"peak measurement unreliable: {', '.join(dict.fromkeys(faster))} ran faster than the "
        f"{peak.gflops:.1f} GFLOP/s of the {peak.matmul_size}x{peak.matmul_size} {peak.dtype} matmul; "
        "their share of peak is not shown"
    )


def run_benchmark(config: BenchConfig, on_progress: ProgressCallback | None = None) -> BenchResult:
    """Measure every case of ``config``; ``on_progress`` is told before each step."""
    device = resolve_device(config.device)  # absent device: ValueError before any work
    dtype = resolve_dtype(config.dtype)
    cases = _cases(config, device)
    total = len(cases) + 1
    report: ProgressCallback = on_progress or (lambda done, total, description: None)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()

    available = available_memory(device)
    too_large = {
        case: reason for case in cases if (reason := memory_shortfall(case.memory_bytes, available, device)) is not None
    }
    if too_large and len(too_large) == len(cases):
        smallest = min(cases, key=lambda case: case.memory_bytes)
        raise ValueError(
            f"no case of this benchmark fits in memory: the smallest ({smallest.impl} {smallest.mode}, batch "
            f"{smallest.batch}, seq_len {smallest.seq_len}, d_model {smallest.d_model}, num_heads "
            f"{smallest.num_heads}) {too_large[smallest]}"
        )

    # Choosing the size times one small product (well under a second even where the dtype is slow).
    matmul_size = config.peak_matmul_size or choose_matmul_size(device, dtype, config.seed)
    report(0, total, f"measuring the peak of {device.type}: {matmul_size}x{matmul_size} {config.dtype} matmul")
    peak = measure_peak(
        device,
        dtype,
        matmul_size=matmul_size,
        min_run_time=config.min_run_time,
        min_samples=config.min_samples,
        seed=config.seed,
    )
    rows = []
    with memory_meter(device, config.measure_memory) as meter:
        runner = _CaseRunner(config, device, peak, meter, too_large)
        for done, case in enumerate(cases, start=1):  # the peak was step 1 of total
            compiled = " (compiled)" if case.compiled else ""
            report(done, total, f"{case.impl}{compiled} {case.mode}, t={case.seq_len}")
            rows.append(runner.run(case))
        memory_method = meter.method
    rank_rows(rows)
    report(total, total, "done")

    header = BenchHeader(
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
        device=str(device),
        device_name=describe_device(device),
        dtype=config.dtype,
        num_threads=torch.get_num_threads(),
        peak_gflops=peak.gflops,
        peak_method=peak.method,
        timing_method=timing_method(device),
        memory_method=memory_method,
        flop_formula=FLOP_FORMULA,
        accuracy_method=(
            f"max |out - ref| / max(1, max |ref|) against the float64 reference on batch element 0, first "
            f"{config.accuracy_tokens} tokens; tolerance {TOLERANCES[config.dtype]:.0e} for {config.dtype}"
        ),
        started_at=started_at,
        elapsed_s=time.perf_counter() - start,
        # Other processes on the machine slow the benchmark down: the load says how busy it was.
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        config=config.to_dict(),
        peak_warning=_peak_warning(rows, peak),
    )
    return BenchResult(header=header, rows=rows)
