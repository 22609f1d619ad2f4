"""Core attention functions on (batch, heads, tokens, head_dim) tensors, registered by name.

Every backend is called the same way::

    out = BACKENDS["naive"](q, k, v, causal=True, scale=None)  # q (b, h, t_q, d), k/v (b, h, t_k, d)

and follows one causal convention (bottom-right alignment, zeros for rows that see no key), documented
in :mod:`attnlab.backends.common`; the one exception is ``flex``, which refuses causal t_q > t_k with a
clear error (its block mask cannot express rows without keys). The multi-head modules in
:mod:`attnlab.implementations` own the projections and hand the core to one of these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..availability import missing_packages_reason
from .common import causal_mask
from .flash_torch import flash_torch_attention
from .flash_triton import flash_triton_attention
from .flex import flex_attention_backend
from .naive import naive_attention
from .sdpa import sdpa_attention, sdpa_mask_attention

__all__ = ["BACKENDS", "Backend", "causal_mask"]


@dataclass(frozen=True)
class Backend:
    """A registered attention core: the function plus what it can do and whether it runs here."""

    name: str
    fn: Callable[..., torch.Tensor]
    summary: str
    supports_dropout: bool = True
    no_backward_on: tuple[str, ...] = ()  # device types without a backward pass
    requires: tuple[str, ...] = ()  # modules that must be importable

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = True,
        scale: float | None = None,
        dropout_p: float = 0.0,
    ) -> torch.Tensor:
        return self.fn(q, k, v, causal=causal, scale=scale, dropout_p=dropout_p)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return missing_packages_reason(self.requires)


BACKENDS: dict[str, Backend] = {
    "naive": Backend("naive", naive_attention, "matmul, mask, softmax, matmul (the readable reference)"),
    "sdpa": Backend("sdpa", sdpa_attention, "F.scaled_dot_product_attention with is_causal (fused kernels)"),
    "sdpa_mask": Backend(
        "sdpa_mask", sdpa_mask_attention, "F.scaled_dot_product_attention with an explicit boolean mask"
    ),
    "flex": Backend(
        "flex",
        flex_attention_backend,
        "compiled FlexAttention with a causal block mask",
        supports_dropout=False,
        no_backward_on=("cpu",),
    ),
    "flash_torch": Backend(
        "flash_torch",
        flash_torch_attention,
        "FlashAttention-2 in plain PyTorch: tiled online softmax, recomputing backward",
        supports_dropout=False,
    ),
    "flash_triton": Backend(
        "flash_triton",
        flash_triton_attention,
        "FlashAttention-2 Triton kernels (CUDA; the CPU only under TRITON_INTERPRET=1)",
        supports_dropout=False,
        requires=("triton",),
    ),
}
