"""Devices and dtypes for benchmarks: pick one by name, fail clearly when it is absent, describe it.

:func:`resolve_device` lives in :mod:`attnlab.devices` (``attnlab check`` uses it too) and is re-exported here.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ..devices import resolve_device

__all__ = ["describe_device", "is_out_of_memory", "resolve_device", "resolve_dtype", "synchronize"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``ValueError`` naming the valid choices otherwise."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _cpu_model_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    """A human name: the GPU's name, or the CPU model and its logical CPU count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"{_cpu_model_name()} ({os.cpu_count()} logical CPUs)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the device ran out of memory (CUDA/MPS OOM, or the CPU allocator's)."""
    # The CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: not enough memory ...").
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "not enough memory" in str(error)
