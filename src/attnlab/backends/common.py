"""Shared pieces of the core attention backends: input checks and the causal-mask convention.

Causal convention (every backend follows it): with ``t_q`` queries and ``t_k`` keys, the queries are
the *last* ``t_q`` positions of the key sequence, so query ``i`` sees keys ``j <= i + (t_k - t_q)``.
This "bottom-right" alignment is what KV-cache decoding needs (one new query sees every cached key)
and is FlashAttention's convention; for ``t_q == t_k`` it is the ordinary lower-triangular mask.
When ``t_q > t_k`` the first ``t_q - t_k`` queries see no key at all: their output is defined as zero.
"""

from __future__ import annotations

import math

import torch

__all__ = ["causal_mask", "check_attention_args", "check_qkv", "resolve_scale"]


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
    if d < 1:
        raise ValueError(f"head_dim must be at least 1, got {d}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")


def check_attention_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float | None, dropout_p: float
) -> None:
    """Every backend's argument checks: the tensors (:func:`check_qkv`) and the options."""
    check_qkv(q, k, v)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False, got {causal!r}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p {dropout_p} must be in [0, 1)")


def resolve_scale(q: torch.Tensor, scale: float | None) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` unless given."""
    return q.shape[-1] ** -0.5 if scale is None else scale


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where a query may see a key, aligned bottom-right (see module doc)."""
    # triu(diagonal=1) marks the future; shifting the diagonal by t_k - t_q aligns the last query with the
    # last key.
    future = torch.ones(t_q, t_k, dtype=torch.bool, device=device).triu(diagonal=t_k - t_q + 1)  # (t_q, t_k)
    return ~future
