"""Devices and dtypes for benchmarks: pick one by name, fail clearly when it is absent, describe it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["describe_device", "is_out_of_memory", "resolve_device", "resolve_dtype", "synchronize"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; a named device must exist (``ValueError`` otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} is not available: torch {torch.__version__} sees no CUDA GPU on this machine "
                "(use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} is not available: no Apple MPS backend here (use --device cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose from auto, cpu, cuda, mps")
    return device


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
