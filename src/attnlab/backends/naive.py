"""The readable reference backend: matmul, mask, softmax, matmul, exactly as chapter 3 does it.

It materialises the whole ``(t_q, t_k)`` score matrix, so every feature of :class:`AttentionSpec` is one
readable line on it. Half-precision inputs are computed in float32 (scores, softmax and the product with
the values), as PyTorch's math path does: float16 scores overflow at 65504, which a dot product of
moderately large vectors reaches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import alibi_distance, visible_mask, zero_past_kv_lens
from .spec import AttentionSpec

__all__ = ["FEATURES", "naive_attention"]

#: Everything: the reference backend does every feature.
FEATURES = frozenset(
    {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse", "dropout"}
)


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention on q (b, h, t_q, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse (b, h, t_q)]."""
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[2]
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    group = h // k.shape[1]  # query heads per key/value head
    k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)  # unwritten cache slots: zeros
    keys = k.to(compute_dtype).repeat_interleave(group, dim=1)  # (b, h, t_k, d): GQA, materialised
    values = v.to(compute_dtype).repeat_interleave(group, dim=1)  # (b, h, t_k, d)
    attn_scores = q.to(compute_dtype) @ keys.transpose(-2, -1) * spec.scale_for(head_dim)  # (b, h, t_q, t_k)
    if spec.softcap is not None:
        attn_scores = spec.softcap * torch.tanh(attn_scores / spec.softcap)
    if spec.alibi_slopes is not None:
        slopes = spec.alibi_slopes.to(compute_dtype).view(1, h, 1, 1)  # (1, h, 1, 1)
        distance = alibi_distance(t_q, t_k, q.device, spec.kv_lens).to(compute_dtype)
        attn_scores = attn_scores - slopes * distance  # (b, h, t_q, t_k)
    visible = visible_mask(t_q, t_k, spec, q.device)  # (t_q, t_k), or (b, 1, t_q, t_k) with kv_lens
    # A row with no visible key would be softmax of all -inf = NaN, whose gradient is NaN too. Leave such
    # rows unmasked and zero their weights after the softmax instead.
    has_key = visible.any(dim=-1, keepdim=True)  # (t_q, 1) or (b, 1, t_q, 1)
    # -inf before softmax gives hidden keys exactly zero weight and keeps each row summing to one.
    masked_scores = attn_scores.masked_fill(~visible & has_key, float("-inf"))  # (b, h, t_q, t_k)
    if spec.sinks is not None:  # the sink is one more logit in the softmax, with no value behind it
        sink = spec.sinks.to(compute_dtype).view(1, h, 1, 1).expand(b, h, t_q, 1)  # (b, h, t_q, 1)
        attn_weights = torch.softmax(torch.cat([masked_scores, sink], dim=-1), dim=-1)[..., :t_k]  # (b, h, t_q, t_k)
    else:
        attn_weights = torch.softmax(masked_scores, dim=-1)  # (b, h, t_q, t_k)
    attn_weights = attn_weights * has_key
    if spec.dropout_p > 0.0:
        attn_weights = F.dropout(attn_weights, p=spec.dropout_p)
    out = (attn_weights @ values).to(q.dtype)  # (b, h, t_q, d)
    if not spec.return_lse:
        return out
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(masked_scores, dim=-1).to(lse_dtype)  # (b, h, t_q); hidden-row masking is undone below
    return out, lse.masked_fill(~has_key.squeeze(-1), float("-inf"))
