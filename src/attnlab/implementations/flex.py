"""``flex``: compiled FlexAttention with a causal block mask built for the input's length and device."""

from __future__ import annotations

from .fused_projection import FusedQKVBackendAttention

__all__ = ["FlexAttention"]


class FlexAttention(FusedQKVBackendAttention):
    """Fused projection plus ``torch.compile(flex_attention)``: no dropout, no backward on the CPU (the
    backend's declarations)."""

    backend = "flex"
