"""The device's practical peak: the FLOP rate of a large square matrix product in the benchmark's dtype.

Vendor peaks assume every unit busy at boost clock; a big ``torch.matmul`` is what the machine can
really sustain through PyTorch, so "share of peak" says how close an implementation comes to the
best PyTorch can do here, with the same threads, clocks and neighbours.

On the CPU the size is chosen per dtype (:func:`choose_matmul_size`): some CPUs have no fast half-precision
matmul (a 2048 x 2048 float16 product took 43 s on one), so a fixed size could take minutes. There the
"peak" is also no upper bound (attention kernels that compute in float32 beat it); the runner flags such
rows instead of printing a share above 100 %.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .flops import matmul_flops
from .timing import time_callable

__all__ = [
    "CPU_PROBE_SIZE",
    "MAX_CALL_SECONDS",
    "PROBE_CALLS",
    "DevicePeak",
    "choose_matmul_size",
    "default_matmul_size",
    "measure_peak",
]

#: The CPU's size is picked so that one product is predicted to take at most this long.
MAX_CALL_SECONDS = 0.25
#: The small product timed on the CPU to predict the time of larger ones, and how many times it is timed.
CPU_PROBE_SIZE = 256
PROBE_CALLS = 3


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


def _random_pair(n: int, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    return a, b


def choose_matmul_size(device: torch.device, dtype: torch.dtype, seed: int = 0) -> int:
    """:func:`default_matmul_size`, except on the CPU: the largest of 256, 512, 1024, 2048 whose product
    is predicted (from the fastest of ``PROBE_CALLS`` timed 256 x 256 products, scaled by n**3) to take at
    most ``MAX_CALL_SECONDS``."""
    largest = default_matmul_size(device)
    if device.type != "cpu":
        return largest
    a, b = _random_pair(CPU_PROBE_SIZE, device, dtype, seed)
    torch.matmul(a, b)  # warm-up
    probe_s = math.inf
    for _ in range(PROBE_CALLS):  # the fastest of a few: other processes only ever slow a call down
        start = time.perf_counter()
        torch.matmul(a, b)
        probe_s = min(probe_s, time.perf_counter() - start)
    probe_s = max(probe_s, 1e-9)
    n = CPU_PROBE_SIZE
    while 2 * n <= largest and probe_s * (2 * n / CPU_PROBE_SIZE) ** 3 <= MAX_CALL_SECONDS:
        n *= 2
    return n


def measure_peak(
    device: torch.device,
    dtype: torch.dtype,
    *,
    matmul_size: int | None = None,
    min_run_time: float = 0.2,
    min_samples: int = 3,
    seed: int = 0,
) -> DevicePeak:
    """Time ``a @ b`` for random ``n x n`` matrices on ``device`` in ``dtype``; return its FLOP rate.

    ``matmul_size=None`` picks ``n`` with :func:`choose_matmul_size`.
    """
    n = choose_matmul_size(device, dtype, seed) if matmul_size is None else matmul_size
    a, b = _random_pair(n, device, dtype, seed)
    torch.matmul(a, b)  # warm-up: library initialisation, kernel selection
    timing = time_callable(lambda: torch.matmul(a, b), device, min_run_time=min_run_time, min_samples=min_samples)
    gflops = matmul_flops(n, n, n) / timing.median_s / 1e9
    return DevicePeak(gflops=gflops, matmul_size=n, dtype=str(dtype).removeprefix("torch."), median_s=timing.median_s)
