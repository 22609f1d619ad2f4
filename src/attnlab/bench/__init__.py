"""``attnlab bench``: every registered attention implementation timed, checked and compared.

Library first::

    from attnlab.bench import BenchConfig, run_benchmark, results_table, write_results

    config = BenchConfig.from_preset("quick", impls=("sdpa", "ch03"), modes=("forward",))
    result = run_benchmark(config, on_progress=lambda done, total, what: None)
    write_results(result, "bench-results")  # results.json, results.csv, bench.png (+ sweep.png)

The pieces are reusable for other workloads (e.g. a whole model): :func:`time_callable` times any
callable, :func:`memory_meter` measures any picklable ``make_step``, :func:`measure_peak` gives the
device's practical FLOP rate. Configs (:class:`BenchConfig`, :class:`ModelBenchConfig`) validate everything
before any work; a case that cannot fit in memory is refused by estimate (:mod:`attnlab.memory_guard`).
"""

from __future__ import annotations

from .config import PRESETS, BenchConfig, Preset, Sweep, default_preset
from .devices import describe_device, resolve_device, resolve_dtype
from .flops import FLOP_FORMULA, attention_flops
from .memory import MemoryResult, WorkloadError, memory_meter
from .model_config import ModelBenchConfig
from .peak import DevicePeak, choose_matmul_size, measure_peak
from .report import results_table, write_csv, write_json, write_results
from .results import STATUSES, BenchHeader, BenchResult, BenchRow
from .runner import ProgressCallback, run_benchmark
from .timing import Timing, check_timing_budget, time_callable
from .variant import AttentionVariant

__all__ = [
    "FLOP_FORMULA",
    "PRESETS",
    "STATUSES",
    "AttentionVariant",
    "BenchConfig",
    "BenchHeader",
    "BenchResult",
    "BenchRow",
    "DevicePeak",
    "MemoryResult",
    "ModelBenchConfig",
    "Preset",
    "ProgressCallback",
    "Sweep",
    "Timing",
    "WorkloadError",
    "attention_flops",
    "check_timing_budget",
    "choose_matmul_size",
    "default_preset",
    "describe_device",
    "measure_peak",
    "memory_meter",
    "resolve_device",
    "resolve_dtype",
    "results_table",
    "run_benchmark",
    "time_callable",
    "write_csv",
    "write_json",
    "write_results",
]
