"""``sdpa_mask``: SDPA given an explicit boolean mask tensor, which keeps it off its FlashAttention kernels."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["SDPAMaskAttention"]


class SDPAMaskAttention(FusedQKVBackendAttention):
    """Fused projection plus SDPA with an explicit causal mask (what the notebook calls "SDPA without flash")."""

    backend = "sdpa_mask"
