"""The device's practical peak: the FLOP rate of a large square matrix product in the benchmark's dtype.

Vendor peaks assume every unit busy at boost clock; a big ``torch.matmul`` is what the machine can
really sustain through PyTorch, so "share of peak" says how close an implementation comes to the
best PyTorch can do here, with the same threads, clocks and neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .flops import matmul_flops
from .timing import time_callable

__all__ = ["DevicePeak", "default_matmul_size", "measure_peak"]


@dataclass(frozen=True)
class DevicePeak:
    """Measured FLOP rate of an ``n x n`` by ``n x n`` matrix product."""

    gflops: float
    matmul_size: int
    dtype: str
    median_s: float

    @property
    def method(self) -> str:
        n = self.matmul_size
        return f"median time of a {n}x{n} @ {n}x{n} {self.dtype} matmul"


def default_matmul_size(device: torch.device) -> int:
    """Large enough to saturate the device, small enough to take well under a second per call."""
    return 2048 if device.type == "cpu" else 8192


def measure_peak(
    device: torch.device,
    dtype: torch.dtype,
    *,
    matmul_size: int | None = None,
    min_run_time: float = 0.2,
    min_samples: int = 3,
    seed: int = 0,
) -> DevicePeak:
    """Time ``a @ b`` for random ``n x n`` matrices on ``device`` in ``dtype``; return its FLOP rate."""
    n = default_matmul_size(device) if matmul_size is None else matmul_size
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    torch.matmul(a, b)  # warm-up: library initialisation, kernel selection
    timing = time_callable(lambda: torch.matmul(a, b), device, min_run_time=min_run_time, min_samples=min_samples)
    gflops = matmul_flops(n, n, n) / timing.median_s / 1e9
    return DevicePeak(gflops=gflops, matmul_size=n, dtype=str(dtype).removeprefix("torch."), median_s=timing.median_s)
