"""An independent float64 reference for causal multi-head attention.

Written differently from every implementation on purpose: one head and one query at a time, each query
attending to the *slice* of keys it may see (no mask, no -inf), softmax spelled out with the max
subtracted. It is slow and only meant for small test sizes.
"""

from __future__ import annotations

import torch

from .weights import AttentionWeights

__all__ = ["reference_attention"]


def reference_attention(x: torch.Tensor, weights: AttentionWeights, num_heads: int) -> torch.Tensor:
    """Causal multi-head self-attention of ``x`` (b, t, d_in) in float64; returns (b, t, d_out) float64.

    Differentiable, so gradients with respect to ``x`` and the weights serve as references too.
    """
    x = x.to(torch.float64)
    w = weights.to(dtype=torch.float64)
    d_out = w.d_out
    if d_out % num_heads != 0:
        raise ValueError(f"d_out {d_out} is not divisible by num_heads {num_heads}")
    head_dim = d_out // num_heads
    _, num_tokens, _ = x.shape

    def project(W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = x @ W.T  # (b, t, d_out)
        return out if bias is None else out + bias

    queries = project(w.W_query, w.b_query)  # (b, t, d_out)
    keys = project(w.W_key, w.b_key)  # (b, t, d_out)
    values = project(w.W_value, w.b_value)  # (b, t, d_out)

    heads = []
    for h in range(num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        rows = []
        for i in range(num_tokens):
            q_i = queries[:, i, cols]  # (b, hd)
            k_seen = keys[:, : i + 1, cols]  # (b, i+1, hd): token i sees tokens 0..i
            v_seen = values[:, : i + 1, cols]  # (b, i+1, hd)
            scores = (k_seen * q_i[:, None, :]).sum(-1) / head_dim**0.5  # (b, i+1)
            e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)  # (b, i+1)
            probs = e / e.sum(dim=-1, keepdim=True)  # (b, i+1)
            rows.append((probs[:, :, None] * v_seen).sum(1))  # (b, hd)
        heads.append(torch.stack(rows, dim=1))  # (b, t, hd)
    context_vec = torch.cat(heads, dim=-1)  # (b, t, d_out)
    return context_vec @ w.W_out.T + w.b_out  # (b, t, d_out)
