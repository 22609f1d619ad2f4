"""The normalisations of modern decoders: LayerNorm (GPT-2) and RMSNorm, plain or Gemma's ``1 + weight``.

RMSNorm divides by the root mean square of the features (no mean subtracted, no bias) and multiplies by a
learned weight, in float32 whatever the input dtype. The order of the final cast matters for matching
checkpoints bit for bit in half precision: Llama casts the normalised input back first and then multiplies
by the weight; Gemma multiplies in float32 by ``1 + weight`` (its weights are stored as offsets from 1,
initialised to zero) and casts last.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "make_norm"]


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension (``plus_one``: ``* (1 + weight)``, Gemma)."""

    def __init__(self, width: int, eps: float, plus_one: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.plus_one = plus_one
        # Gemma stores offsets from 1 (zeros: identity); the others store the scale itself (ones: identity).
        self.weight = nn.Parameter(torch.zeros(width) if plus_one else torch.ones(width))  # (width,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., width) float32
        if self.plus_one:
            return (normed * (1.0 + self.weight.float())).type_as(x)  # (..., width)
        return self.weight * normed.type_as(x)  # (..., width)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, plus_one={self.plus_one}"


def make_norm(kind: str, width: int, eps: float) -> nn.Module:
    """The norm called ``kind`` (``layernorm``, ``rmsnorm`` or ``rmsnorm_plus_one``) over ``width`` features."""
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps)
    if kind in ("rmsnorm", "rmsnorm_plus_one"):
        return RMSNorm(width, eps, plus_one=kind == "rmsnorm_plus_one")
    raise ValueError(f"unknown norm {kind!r}; use layernorm, rmsnorm or rmsnorm_plus_one")
