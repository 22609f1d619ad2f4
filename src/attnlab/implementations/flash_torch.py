"""``flash_torch``: the fused projection plus attnlab's own FlashAttention-2, written in plain PyTorch."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["FlashTorchAttention"]


class FlashTorchAttention(FusedQKVBackendAttention):
    """Fused projection plus the tiled online-softmax core of :mod:`attnlab.backends.flash_torch` (no dropout);
    its other options are those the backend declares."""

    backend = "flash_torch"
