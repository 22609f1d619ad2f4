"""FlexAttention (``torch.nn.attention.flex_attention``), compiled, with a causal block mask.

The block mask is built for the input's lengths on the input's device and cached, since building
it costs a pass over every block. FlexAttention has no dropout (the registry refuses it), and current
PyTorch has no CPU backward for it: refused with a clear error instead of a deep traceback.
"""

from __future__ import annotations

import functools

import torch

from .spec import AttentionSpec

__all__ = ["FEATURES", "flex_attention_backend"]

FEATURES = frozenset()


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled, flex_attention falls back to an unfused path that materialises the scores.
    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=32)
def _causal_block_mask(t_q: int, t_k: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = t_k - t_q  # bottom-right alignment, as every attnlab backend

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return create_block_mask(causal, B=None, H=None, Q_LEN=t_q, KV_LEN=t_k, device=device)


def flex_attention_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Compiled FlexAttention on q (b, h, t_q, d), k/v (b, h, t_k, d)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            "flex attention has no backward pass on the CPU in this PyTorch; run it under torch.no_grad() or on CUDA"
        )
    t_q, t_k = q.shape[-2], k.shape[-2]
    if spec.causal and t_q > t_k:
        raise ValueError(f"flex backend needs t_q <= t_k for causal attention, got t_q={t_q} > t_k={t_k}")
    block_mask = _causal_block_mask(t_q, t_k, str(q.device)) if spec.causal else None
    return _compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=spec.scale)  # (b, h, t_q, d)
