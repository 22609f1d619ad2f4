"""Half-precision inputs: the written-out attention cores compute their scores and softmax in float32.

float16's largest finite value is 65504, so ``q @ k^T`` of finite half-precision inputs can overflow to
``inf``, and the softmax then computes ``inf - inf = NaN``; bfloat16 has float32's range but keeps only 8
significant bits, so a logit near 1e4 is rounded to a multiple of 64 and the softmax of such logits is far
off. PyTorch's math path for ``scaled_dot_product_attention`` and every FlashAttention kernel therefore
compute the scores and the softmax in float32; the cores written out in this package do the same, then cast
the attention weights back to the values' dtype for the product with the values. For float32 and float64
inputs nothing changes.
"""

from __future__ import annotations

import torch

__all__ = ["HALF_PRECISION", "float32_if_half"]

#: The dtypes whose attention scores are computed in float32.
HALF_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def float32_if_half(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 if it is float16 or bfloat16 (differentiably), else ``t`` itself."""
    return t.float() if t.dtype in HALF_PRECISION else t
