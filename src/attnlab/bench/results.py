"""What a benchmark run produces: a header describing the machine and method, and one row per case.

Plain dataclasses so that reports (table, JSON, CSV, plots) and later benchmarks can share them; every
field is JSON-ready. A row's ``status`` is one of :data:`STATUSES`; only ``"ok"`` rows carry timings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["STATUSES", "BenchHeader", "BenchResult", "BenchRow"]

#: ok: timed; failed: output over tolerance (not timed, not ranked); unsupported: the implementation
#: declares it cannot run this device/mode; unavailable: a package it needs is missing; oom: ran out
#: of memory; error: raised something else (the message is in ``note``).
STATUSES: tuple[str, ...] = ("ok", "failed", "unsupported", "unavailable", "oom", "error")


@dataclass
class BenchRow:
    """One implementation in one mode at one size. Times in milliseconds, memory in bytes."""

    impl: str
    mode: str
    compiled: bool
    device: str
    dtype: str
    batch: int
    seq_len: int
    d_model: int
    num_heads: int
    status: str
    note: str = ""
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None
    iqr_ms: float | None = None
    num_samples: int | None = None
    flops: float | None = None  # counted FLOPs of one call (see attnlab.bench.flops)
    gflops: float | None = None  # achieved: flops / median time
    peak_fraction: float | None = None  # gflops / the device peak measured in the same run; None above 1
    peak_mem_bytes: int | None = None  # peak memory of one call above what was held before it
    max_abs_err: float | None = None  # vs the float64 reference, relative to max(1, max |ref|)
    tolerance: float | None = None
    compile_s: float | None = None  # compiled rows: first call (compilation included) minus a timed call
    speedup: float | None = None  # slowest ok median of the same mode and size / this median

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {', '.join(STATUSES)}")

    @property
    def label(self) -> str:
        """The implementation's name, marked when compiled."""
        return f"{self.impl} (compiled)" if self.compiled else self.impl

    def size_key(self) -> tuple[int, int, int, int]:
        return (self.batch, self.seq_len, self.d_model, self.num_heads)


@dataclass
class BenchHeader:
    """The machine, the method and the measured peak: what a reader needs to trust the rows."""

    torch_version: str
    python_version: str
    platform: str
    device: str
    device_name: str
    dtype: str
    num_threads: int
    peak_gflops: float
    peak_method: str
    timing_method: str
    memory_method: str
    flop_formula: str
    accuracy_method: str
    started_at: str
    elapsed_s: float
    load_average: list[float] | None  # 1, 5, 15-minute system load at the end (None where unknown)
    config: dict[str, Any] = field(default_factory=dict)
    peak_warning: str | None = None  # set when rows ran faster than the measured peak (their share not shown)


@dataclass
class BenchResult:
    """A whole run: ``header`` plus ``rows`` in run order (size, then mode, then implementation)."""

    header: BenchHeader
    rows: list[BenchRow]

    @property
    def sweep_key(self) -> str | None:
        sweep = self.header.config.get("sweep")
        return None if sweep is None else sweep["key"]

    def ok_rows(self) -> list[BenchRow]:
        return [row for row in self.rows if row.status == "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {"header": asdict(self.header), "rows": [asdict(row) for row in self.rows]}
