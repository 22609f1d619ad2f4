"""The readable reference backend: matmul, mask, softmax, matmul, exactly as chapter 3 does it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import causal_mask, check_attention_args, resolve_scale

__all__ = ["naive_attention"]


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention that materialises the full (t_q, t_k) weight matrix; q (b, h, t_q, d), k/v (b, h, t_k, d)."""
    check_attention_args(q, k, v, causal=causal, scale=scale, dropout_p=dropout_p)
    t_q, t_k = q.shape[-2], k.shape[-2]
    attn_scores = (q @ k.transpose(-2, -1)) * resolve_scale(q, scale)  # (b, h, t_q, t_k)
    if causal:
        visible = causal_mask(t_q, t_k, q.device)  # (t_q, t_k)
        # A row with no visible key (t_q > t_k) would be softmax of all -inf = NaN, whose gradient is NaN
        # too. Leave such rows unmasked and zero their weights after the softmax instead.
        has_key = visible.any(dim=-1, keepdim=True)  # (t_q, 1)
        # -inf before softmax gives future keys exactly zero weight and keeps each row summing to one.
        attn_scores = attn_scores.masked_fill(~visible & has_key, float("-inf"))
        attn_weights = torch.softmax(attn_scores, dim=-1) * has_key  # (b, h, t_q, t_k)
    else:
        attn_weights = torch.softmax(attn_scores, dim=-1)  # (b, h, t_q, t_k)
    if dropout_p > 0.0:
        attn_weights = F.dropout(attn_weights, p=dropout_p)
    return attn_weights @ v  # (b, h, t_q, d)
