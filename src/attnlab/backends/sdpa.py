"""PyTorch's ``scaled_dot_product_attention``: with ``is_causal`` (fused kernels) or an explicit mask.

SDPA's own ``is_causal`` aligns the mask top-left, so when ``t_q != t_k`` these backends pass a
bottom-right mask instead, to keep attnlab's one convention (see :mod:`attnlab.backends.common`).
GQA goes through SDPA's ``enable_gqa`` (no repeated keys/values). ``sdpa_mask`` also takes windows,
packed sequences, per-row key lengths (``kv_lens``: a (b, 1, t_q, t_k) mask) and ALiBi, as a boolean or
additive mask; neither can softcap the scores, add sinks or return the log-sum-exp (SDPA has no such
options), so those are refused by the registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import alibi_distance, visible_mask, zero_past_kv_lens
from .spec import AttentionSpec

__all__ = ["SDPA_FEATURES", "SDPA_MASK_FEATURES", "sdpa_attention", "sdpa_mask_attention"]

SDPA_FEATURES = frozenset({"gqa", "dropout"})
SDPA_MASK_FEATURES = frozenset({"gqa", "window", "alibi_slopes", "seq_lens", "kv_lens", "dropout"})


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, **mask) -> torch.Tensor:
    """One SDPA call with the spec's scale, dropout and GQA; ``mask`` is ``attn_mask=`` or ``is_causal=``."""
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=spec.dropout_p, scale=spec.scale, enable_gqa=k.shape[1] != q.shape[1], **mask
    )  # (b, h, t_q, d)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """SDPA with ``is_causal=True`` (or a lower-right causal bias when t_q != t_k), free to use fused kernels."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    if not spec.causal:
        return _sdpa(q, k, v, spec)
    if t_q == t_k:
        return _sdpa(q, k, v, spec, is_causal=True)
    if t_q < t_k:
        # Every query sees at least one key; the lower-right bias keeps the fused kernels available.
        # (Imported here: torch.nn.attention.bias pulls in torch._dynamo, seconds of import time.)
        from torch.nn.attention.bias import causal_lower_right

        return _sdpa(q, k, v, spec, attn_mask=causal_lower_right(t_q, t_k))
    return sdpa_mask_attention(q, k, v, spec)


def sdpa_mask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """SDPA with an explicit mask tensor (boolean, or additive with ALiBi), which keeps PyTorch off FlashAttention."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    visible = visible_mask(t_q, t_k, spec, q.device)  # (t_q, t_k) [(b, 1, t_q, t_k) with kv_lens], True = may attend
    # Rows with no visible key are opened up, so the softmax stays finite, then zeroed.
    has_key = visible.any(dim=-1, keepdim=True)  # (t_q, 1) or (b, 1, t_q, 1)
    attn_mask = visible | ~has_key  # (t_q, t_k) or (b, 1, t_q, t_k)
    if spec.alibi_slopes is not None:  # additive: -slope * distance where visible, -inf elsewhere
        slopes = spec.alibi_slopes.to(q.dtype).view(-1, 1, 1)  # (h, 1, 1)
        distance = alibi_distance(t_q, t_k, q.device, spec.kv_lens).to(q.dtype)  # (t_q, t_k) or (b, 1, t_q, t_k)
        bias = -slopes * distance  # (h, t_q, t_k) or (b, h, t_q, t_k)
        attn_mask = bias.masked_fill(~attn_mask, float("-inf"))  # (h, t_q, t_k) or (b, h, t_q, t_k)
    k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)  # unwritten cache slots: zeros
    out = _sdpa(q, k, v, spec, attn_mask=attn_mask)  # (b, h, t_q, d)
    return out if bool(has_key.all()) else out * has_key
