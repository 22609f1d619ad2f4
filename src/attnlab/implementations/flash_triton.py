"""``flash_triton``: the fused projection plus attnlab's own FlashAttention-2 Triton kernels."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.flash_triton import unsupported_device_reason
from .base import Capabilities, Mode
from .fused_projection import FusedQKVBackendAttention

__all__ = ["FlashTritonAttention", "TritonCapabilities"]


@dataclass(frozen=True)
class TritonCapabilities(Capabilities):
    """Capabilities of the Triton kernels: CUDA, or the CPU only when Triton's interpreter was requested."""

    def unsupported_reason(self, device_type: str, mode: Mode = "forward") -> str | None:
        reason = super().unsupported_reason(device_type, mode)
        return reason if reason is not None else unsupported_device_reason(device_type)


class FlashTritonAttention(FusedQKVBackendAttention):
    """Fused projection plus the kernels of :mod:`attnlab.backends.flash_triton`; no dropout."""

    capabilities = TritonCapabilities(dropout=False, requires=("triton",))
    backend = "flash_triton"
