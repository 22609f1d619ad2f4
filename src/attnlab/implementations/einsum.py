"""``einsum``: projections and attention written as ``torch.einsum`` over ``nn.Parameter`` matrices.

The notebook's version indexed its (d_out, d_in) weights as if they were (d_in, d_out), which works
only when d_in == d_out; here every subscript is named for what it is, and the tests use d_in != d_out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..backends.common import causal_mask
from ..weights import AttentionWeights
from .base import MultiHeadAttentionBase, copy_into
from .kv_cache import LayerKVCache
from .precision import float32_if_half

__all__ = ["EinsumAttention"]


class EinsumAttention(MultiHeadAttentionBase):
    """Einsum projections (b: batch, t/s: query/key token, i: input feature, o: output feature, h, d)."""

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
        init = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)  # borrow nn.Linear's initialisation
        W_query, W_key, W_value = init.weight.detach().chunk(3)  # 3 x (d_out, d_in)
        self.W_query = nn.Parameter(W_query.clone())
        self.W_key = nn.Parameter(W_key.clone())
        self.W_value = nn.Parameter(W_value.clone())
        if qkv_bias:
            b_query, b_key, b_value = init.bias.detach().chunk(3)  # 3 x (d_out,)
            self.b_query = nn.Parameter(b_query.clone())
            self.b_key = nn.Parameter(b_key.clone())
            self.b_value = nn.Parameter(b_value.clone())
        else:
            self.b_query = self.b_key = self.b_value = None
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # The mask is derived from context_length, never learned: a buffer so it follows .to(device), and
        # non-persistent so checkpoints hold only learned weights and load at any context length.
        mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)  # (T, T)
        self.register_buffer("mask", mask, persistent=False)

    def _project(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = torch.einsum("bti,oi->bto", x, weight)  # (b, t, d_out)
        return out if bias is None else out + bias

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        queries = self.split_heads(self._project(x, self.W_query, self.b_query))  # (b, h, t, hd)
        keys = self.split_heads(self._project(x, self.W_key, self.b_key))  # (b, h, t, hd)
        values = self.split_heads(self._project(x, self.W_value, self.b_value))  # (b, h, t, hd)
        return self._attend_heads(queries, keys, values, future=self.mask[:t, :t])  # (b, t, d_out)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        """``attend`` for new tokens only: s now runs over the cached keys plus the new ones."""
        t = x.shape[1]
        queries = self.split_heads(self._project(x, self.W_query, self.b_query))  # (b, h, t, hd)
        keys, values = cache.append(
            self.split_heads(self._project(x, self.W_key, self.b_key)),
            self.split_heads(self._project(x, self.W_value, self.b_value)),
        )  # (b, h, s, hd) each, s = cached + t
        # The t new queries are the last t of the s positions: mask aligned bottom-right.
        future = ~causal_mask(t, keys.shape[2], x.device)  # (t, s)
        return self._attend_heads(queries, keys, values, future)  # (b, t, d_out)

    def _attend_heads(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, future: torch.Tensor
    ) -> torch.Tensor:
        """Queries (b, h, t, hd) against keys/values (b, h, s, hd); ``future`` (t, s) is True where a query
        may not look. Scores and softmax in float32 for half-precision inputs (see ``precision``)."""
        attn_scores = torch.einsum("bhtd,bhsd->bhts", float32_if_half(queries), float32_if_half(keys))  # (b, h, t, s)
        attn_scores = attn_scores.masked_fill(future, float("-inf"))
        attn_weights = torch.softmax(attn_scores * self.head_dim**-0.5, dim=-1)  # (b, h, t, s)
        attn_weights = self.dropout(attn_weights.to(values.dtype))  # back to the values' dtype

        context_vec = torch.einsum("bhts,bhsd->bhtd", attn_weights, values)  # (b, h, t, hd)
        return self.out_proj(self.merge_heads(context_vec))  # (b, t, d_out)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        copy_into(self.W_query, weights.W_query)
        copy_into(self.W_key, weights.W_key)
        copy_into(self.W_value, weights.W_value)
        if self.qkv_bias:
            copy_into(self.b_query, weights.b_query)
            copy_into(self.b_key, weights.b_key)
            copy_into(self.b_value, weights.b_value)
        copy_into(self.out_proj.weight, weights.W_out)
        copy_into(self.out_proj.bias, weights.b_out)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        return AttentionWeights(
            W_query=pick(self.W_query),
            W_key=pick(self.W_key),
            W_value=pick(self.W_value),
            W_out=pick(self.out_proj.weight),
            b_out=pick(self.out_proj.bias),
            b_query=pick(self.b_query) if self.qkv_bias else None,
            b_key=pick(self.b_key) if self.qkv_bias else None,
            b_value=pick(self.b_value) if self.qkv_bias else None,
        )
