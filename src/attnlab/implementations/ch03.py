"""``ch03``: the chapter's :class:`~attnlab.chapter3.MultiHeadAttention` (weight split, batched matmuls)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..backends.common import causal_mask
from ..chapter3 import MultiHeadAttention
from ..weights import AttentionWeights
from .base import MultiHeadAttentionBase, copy_into
from .kv_cache import LayerKVCache
from .precision import float32_if_half

__all__ = ["Ch03Attention"]


class Ch03Attention(MultiHeadAttentionBase):
    """The book's class behind the common interface: its layers (three q/k/v linears split into heads, the
    output projection, dropout, the mask buffer) and its forward pass, step by step.

    The steps are the book's, with one addition: for float16/bfloat16 inputs the scores and the softmax run
    in float32 (see :mod:`attnlab.implementations.precision`), where the book's forward would overflow
    float16 and lose bfloat16's precision. For float32 and float64 the result is exactly the book's module's.
    """

    def __init__(
        self,
        *,
        d_in: int,
        d_out: int,
        num_heads: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__(
            d_in=d_in,
            d_out=d_out,
            num_heads=num_heads,
            context_length=context_length,
            dropout=dropout,
            qkv_bias=qkv_bias,
        )
        self.mha = MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mha = self.mha
        queries = self.split_heads(mha.W_query(x))  # (b, h, t, hd)
        keys = self.split_heads(mha.W_key(x))  # (b, h, t, hd)
        values = self.split_heads(mha.W_value(x))  # (b, h, t, hd)
        return self._attend_heads(queries, keys, values, future=mha.mask.bool()[:t, :t])  # (b, t, d_out)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        """The book's forward pass for new tokens only, against cached keys and values: same layers,
        same steps, but the mask is aligned to the last rows, as the t new queries come last."""
        mha = self.mha
        t = x.shape[1]
        queries = self.split_heads(mha.W_query(x))  # (b, h, t, hd)
        keys, values = cache.append(self.split_heads(mha.W_key(x)), self.split_heads(mha.W_value(x)))
        t_k = keys.shape[2]  # cached tokens + these t, (b, h, t_k, hd)
        return self._attend_heads(queries, keys, values, future=~causal_mask(t, t_k, x.device))  # (b, t, d_out)

    def _attend_heads(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, future: torch.Tensor
    ) -> torch.Tensor:
        """The book's core on queries (b, h, t, hd) and keys/values (b, h, t_k, hd), ``future`` (t, t_k) True
        where a query may not look: scores, mask, scaled softmax, dropout, weighted values, output projection."""
        mha = self.mha
        attn_scores = float32_if_half(queries) @ float32_if_half(keys).transpose(2, 3)  # (b, h, t, t_k)
        attn_scores.masked_fill_(future, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, h, t, t_k)
        attn_weights = mha.dropout(attn_weights.to(values.dtype))  # back to the values' dtype

        context_vec = self.merge_heads(attn_weights @ values)  # (b, t, d_out)
        return mha.out_proj(context_vec)  # (b, t, d_out)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        copy_into(self.mha.W_query.weight, weights.W_query)
        copy_into(self.mha.W_key.weight, weights.W_key)
        copy_into(self.mha.W_value.weight, weights.W_value)
        if self.qkv_bias:
            copy_into(self.mha.W_query.bias, weights.b_query)
            copy_into(self.mha.W_key.bias, weights.b_key)
            copy_into(self.mha.W_value.bias, weights.b_value)
        copy_into(self.mha.out_proj.weight, weights.W_out)
        copy_into(self.mha.out_proj.bias, weights.b_out)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        mha = self.mha
        return AttentionWeights(
            W_query=pick(mha.W_query.weight),
            W_key=pick(mha.W_key.weight),
            W_value=pick(mha.W_value.weight),
            W_out=pick(mha.out_proj.weight),
            b_out=pick(mha.out_proj.bias),
            b_query=pick(mha.W_query.bias) if self.qkv_bias else None,
            b_key=pick(mha.W_key.bias) if self.qkv_bias else None,
            b_value=pick(mha.W_value.bias) if self.qkv_bias else None,
        )
