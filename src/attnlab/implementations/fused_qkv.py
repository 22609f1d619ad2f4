"""``fused_qkv``: one combined q/k/v projection, then the book's matmul-mask-softmax-matmul core."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["FusedQKVAttention"]


class FusedQKVAttention(FusedQKVBackendAttention):
    """Combined ``nn.Linear(d_in, 3 * d_out)`` projection with the ``naive`` core: one matmul instead of three."""

    backend = "naive"
