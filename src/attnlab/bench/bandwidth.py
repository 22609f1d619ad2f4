"""The device's practical memory bandwidth: the read rate of one ``torch.sum`` over a large tensor.

A decode step at batch 1 reads every weight and the whole KV cache once and does little arithmetic with
them, so its speed limit is memory bandwidth: ``bytes read / bandwidth`` is the fastest a step can be.
Vendor numbers assume every channel busy; a ``torch.sum`` over a tensor far larger than the caches is what
this machine sustains through PyTorch, with the same threads and neighbours as the run it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..validate import check_positive_int
from .timing import Timing, time_callable

__all__ = ["Bandwidth", "default_bandwidth_bytes", "largest_cpu_cache_bytes", "measure_bandwidth"]

#: The probe's size is 4x the largest cache, within these bounds (a GPU's L2 is tens of MiB: 1 GiB there).
MIN_PROBE_BYTES = 256 * 2**20
MAX_PROBE_BYTES = 2 * 2**30
GPU_PROBE_BYTES = 2**30
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def largest_cpu_cache_bytes() -> int | None:
    """The largest cache of CPU 0 that Linux reports (``/sys/.../cache/index*/size``), or None elsewhere."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        if text[:-1].isdigit() and text[-1] in _UNITS:
            sizes.append(int(text[:-1]) * _UNITS[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=None)


def default_bandwidth_bytes(device: torch.device) -> int:
    """A probe size well beyond the caches: 4x the largest CPU cache (256 MiB to 2 GiB), 1 GiB on a GPU."""
    if device.type != "cpu":
        return GPU_PROBE_BYTES
    cache = largest_cpu_cache_bytes() or MIN_PROBE_BYTES
    return min(max(4 * cache, MIN_PROBE_BYTES), MAX_PROBE_BYTES)


@dataclass(frozen=True)
class Bandwidth:
    """``num_bytes`` read in ``timing.median_s``: ``bytes_per_s`` (decimal GB/s in :attr:`gb_per_s`)."""

    num_bytes: int
    timing: Timing

    @property
    def bytes_per_s(self) -> float:
        return self.num_bytes / self.timing.median_s

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_s / 1e9


def measure_bandwidth(device: torch.device, *, num_bytes: int | None = None, min_run_time: float = 0.5) -> Bandwidth:
    """Time ``torch.sum`` over a float32 tensor of ``num_bytes`` on ``device`` (each call reads it once;
    default :func:`default_bandwidth_bytes`)."""
    if num_bytes is None:
        num_bytes = default_bandwidth_bytes(device)
    check_positive_int("num_bytes", num_bytes)
    numel = max(1, num_bytes // 4)
    data = torch.ones(numel, dtype=torch.float32, device=device)  # (numel,), written once: really allocated
    timing = time_callable(lambda: torch.sum(data), device, min_run_time=min_run_time)
    return Bandwidth(numel * 4, timing)
