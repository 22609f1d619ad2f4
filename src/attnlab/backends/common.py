"""Shared pieces of the core attention backends: input checks and the causal-mask convention.

Causal convention (every backend follows it): with ``t_q`` queries and ``t_k`` keys, the queries are
the *last* ``t_q`` positions of the key sequence, so query ``i`` sees keys ``j <= i + (t_k - t_q)``.
This "bottom-right" alignment is what KV-cache decoding needs (one new query sees every cached key)
and is FlashAttention's convention; for ``t_q == t_k`` it is the ordinary lower-triangular mask.
When ``t_q > t_k`` the first ``t_q - t_k`` queries see no key at all: their output is defined as zero.
"""

from __future__ import annotations

import torch

__all__ = ["causal_mask", "check_qkv", "resolve_scale"]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ``ValueError`` unless q is (b, h, t_q, d) and k, v are (b, h, t_k, d) with matching b, h, d."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(tensor.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, _, d = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (b, h, d):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head_dim")


def resolve_scale(q: torch.Tensor, scale: float | None) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` unless given."""
    return q.shape[-1] ** -0.5 if scale is None else scale


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where a query may see a key, aligned bottom-right (see module doc)."""
    # triu(diagonal=1) marks the future; shifting the diagonal by t_k - t_q aligns the last query with the
    # last key.
    future = torch.ones(t_q, t_k, dtype=torch.bool, device=device).triu(diagonal=t_k - t_q + 1)  # (t_q, t_k)
    return ~future
