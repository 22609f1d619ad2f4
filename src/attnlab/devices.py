"""Pick a torch device by name, and fail clearly (``ValueError``) when it is absent or not supported.

Used by ``attnlab check``, the benchmarks and ``attnlab generate``; :mod:`attnlab.bench.devices`
re-exports :func:`resolve_device`.
"""

from __future__ import annotations

import torch

__all__ = ["mps_available", "resolve_device"]


def mps_available() -> bool:
    """Whether this PyTorch build and machine have Apple's MPS backend."""
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; a named device must exist (``ValueError`` otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # e.g. "gpu0", "cuda:x": torch's parse error lists every device type
        raise ValueError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} is not available: torch {torch.__version__} sees no CUDA GPU on this machine "
                "(use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not mps_available():
        raise ValueError(f"device {name!r} is not available: no Apple MPS backend here (use --device cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose from auto, cpu, cuda, mps")
    return device
