"""``sdpa``: PyTorch's ``scaled_dot_product_attention`` with ``is_causal=True``, free to use fused kernels."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["SDPAAttention"]


class SDPAAttention(FusedQKVBackendAttention):
    """Fused projection plus SDPA with ``is_causal=True`` (FlashAttention / memory-efficient kernels)."""

    backend = "sdpa"
