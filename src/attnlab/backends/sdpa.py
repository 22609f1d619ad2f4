"""PyTorch's ``scaled_dot_product_attention``: with ``is_causal`` (fused kernels) or an explicit mask.

SDPA's own ``is_causal`` aligns the mask top-left, so when ``t_q != t_k`` these backends pass a
bottom-right mask instead, to keep attnlab's one convention (see :mod:`attnlab.backends.common`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import causal_mask, check_attention_args

__all__ = ["sdpa_attention", "sdpa_mask_attention"]


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA with ``is_causal=True`` (or a lower-right causal bias when t_q != t_k), free to use fused kernels."""
    check_attention_args(q, k, v, causal=causal, scale=scale, dropout_p=dropout_p)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if not causal:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)  # (b, h, t_q, d)
    if t_q == t_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
    if t_q < t_k:
        # Every query sees at least one key; the lower-right bias keeps the fused kernels available.
        # (Imported here: torch.nn.attention.bias pulls in torch._dynamo, seconds of import time.)
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(t_q, t_k)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return sdpa_mask_attention(q, k, v, causal=True, scale=scale, dropout_p=dropout_p)


def sdpa_mask_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA with an explicit boolean mask tensor, which keeps PyTorch off its FlashAttention kernels."""
    check_attention_args(q, k, v, causal=causal, scale=scale, dropout_p=dropout_p)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if not causal:
        mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)  # (t_q, t_k)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    visible = causal_mask(t_q, t_k, q.device)  # (t_q, t_k), True = may attend
    # Rows with no visible key (t_q > t_k) are opened up, so the softmax stays finite, then zeroed.
    has_key = visible.any(dim=-1, keepdim=True)  # (t_q, 1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=visible | ~has_key, dropout_p=dropout_p, scale=scale
    )  # (b, h, t_q, d)
    return out if bool(has_key.all()) else out * has_key
