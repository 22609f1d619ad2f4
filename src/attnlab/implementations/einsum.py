"""``einsum``: projections and attention written as ``torch.einsum`` over ``nn.Parameter`` matrices.

The notebook's version indexed its (d_out, d_in) weights as if they were (d_in, d_out), which works
only when d_in == d_out; here every subscript is named for what it is, and the tests use d_in != d_out.

Grouped-query attention is one more subscript: the query heads are split as (k, g), key/value head ``k``
and query ``g`` of its group, and the einsum pairs each group with its key/value head, without repeating
keys or values. Window, softcap and sinks are a line each (see :mod:`attnlab.implementations.core_options`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..backends.common import causal_mask
from ..weights import AttentionWeights
from .base import Capabilities, MultiHeadAttentionBase, copy_into
from .core_options import outside_window, softcap_scores, softmax_with_sinks
from .kv_cache import LayerKVCache
from .precision import float32_if_half

__all__ = ["EinsumAttention"]


class EinsumAttention(MultiHeadAttentionBase):
    """Einsum projections and core (b: batch, t/s: query/key token, i: input feature, o: output feature,
    h: query head, k: key/value head, g: query head within its group, d: head feature)."""

    capabilities = Capabilities(features=frozenset({"dropout", "gqa", "window", "softcap", "sinks"}))

    def __init__(
        self,
        *,
        d_in: int,
        d_out: int,
        num_heads: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        num_kv_heads: int | None = None,
        window: int | None = None,
        softcap: float | None = None,
        sinks: bool = False,
    ) -> None:
        super().__init__(
            d_in=d_in,
            d_out=d_out,
            num_heads=num_heads,
            context_length=context_length,
            dropout=dropout,
            qkv_bias=qkv_bias,
            num_kv_heads=num_kv_heads,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
        widths = [self.d_out, self.d_kv, self.d_kv]
        init = nn.Linear(d_in, sum(widths), bias=qkv_bias)  # borrow nn.Linear's initialisation
        W_query, W_key, W_value = init.weight.detach().split(widths)  # (d_out, d_in), 2 x (d_kv, d_in)
        self.W_query = nn.Parameter(W_query.clone())
        self.W_key = nn.Parameter(W_key.clone())
        self.W_value = nn.Parameter(W_value.clone())
        if qkv_bias:
            b_query, b_key, b_value = init.bias.detach().split(widths)  # (d_out,), 2 x (d_kv,)
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
        out = torch.einsum("bti,oi->bto", x, weight)  # (b, t, out_features)
        return out if bias is None else out + bias

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        queries = self.split_heads(self._project(x, self.W_query, self.b_query))  # (b, h, t, hd)
        keys = self.split_heads(self._project(x, self.W_key, self.b_key))  # (b, h_kv, t, hd)
        values = self.split_heads(self._project(x, self.W_value, self.b_value))  # (b, h_kv, t, hd)
        return self._attend_heads(queries, keys, values, future=self.mask[:t, :t])  # (b, t, d_out)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        """``attend`` for new tokens only: s now runs over the cached keys plus the new ones."""
        t = x.shape[1]
        queries = self.split_heads(self._project(x, self.W_query, self.b_query))  # (b, h, t, hd)
        keys, values = cache.append(
            self.split_heads(self._project(x, self.W_key, self.b_key)),
            self.split_heads(self._project(x, self.W_value, self.b_value)),
        )  # (b, h_kv, s, hd) each, s = cached + t
        # The t new queries are the last t of the s positions: mask aligned bottom-right.
        future = ~causal_mask(t, keys.shape[2], x.device)  # (t, s)
        return self._attend_heads(queries, keys, values, future)  # (b, t, d_out)

    def _attend_heads(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, future: torch.Tensor
    ) -> torch.Tensor:
        """Queries (b, h, t, hd) against keys/values (b, h_kv, s, hd); ``future`` (t, s) is True where a query
        may not look. Scores and softmax in float32 for half-precision inputs (see ``precision``)."""
        b, _, t, _ = queries.shape
        group = self.num_heads // self.num_kv_heads  # query heads per key/value head
        grouped = queries.view(b, self.num_kv_heads, group, t, self.head_dim)  # (b, k, g, t, d), h = k * g
        attn_scores = torch.einsum(
            "bkgtd,bksd->bkgts", float32_if_half(grouped), float32_if_half(keys)
        )  # (b, k, g, t, s)
        attn_scores = attn_scores * self.head_dim**-0.5
        if self.softcap is not None:
            attn_scores = softcap_scores(attn_scores, self.softcap)
        if self.window is not None:
            future = future | outside_window(future.shape[0], future.shape[1], self.window, future.device)  # (t, s)
        attn_scores = attn_scores.masked_fill(future, float("-inf"))
        sinks = None if self.sinks is None else self.sinks.view(1, self.num_kv_heads, group, 1, 1)  # (1, k, g, 1, 1)
        attn_weights = softmax_with_sinks(attn_scores, sinks)  # (b, k, g, t, s)
        attn_weights = self.dropout(attn_weights.to(values.dtype))  # back to the values' dtype

        context_vec = torch.einsum("bkgts,bksd->bkgtd", attn_weights, values)  # (b, k, g, t, d)
        context_vec = context_vec.reshape(b, self.num_heads, t, self.head_dim)  # (b, h, t, hd)
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
        self._load_sinks(weights)

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
            sinks=self._export_sinks(pick),
        )
