"""``flash_triton``: the fused projection plus attnlab's own FlashAttention-2 Triton kernels."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["FlashTritonAttention"]


class FlashTritonAttention(FusedQKVBackendAttention):
    """Fused projection plus the kernels of :mod:`attnlab.backends.flash_triton` (no dropout; CUDA, or the CPU
    under ``TRITON_INTERPRET=1``); its other options are those the backend declares."""

    backend = "flash_triton"
