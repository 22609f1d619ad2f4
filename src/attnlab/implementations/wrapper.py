"""``wrapper``: the chapter's stacked causal heads, each of width d_out / num_heads, plus an output projection.

Unlike :class:`attnlab.chapter3.MultiHeadAttentionWrapper` (heads of width d_out, output num_heads *
d_out), this version splits d_out among the heads so that it computes the same function as the others.
Each head runs :class:`~attnlab.chapter3.CausalAttention`'s forward pass step by step, with one addition:
for float16/bfloat16 inputs the scores and the softmax run in float32 (see
:mod:`attnlab.implementations.precision`); for float32 and float64 each head's output is exactly the book's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..chapter3 import CausalAttention
from ..weights import AttentionWeights
from .base import MultiHeadAttentionBase, copy_into
from .precision import float32_if_half

__all__ = ["WrapperAttention"]


class WrapperAttention(MultiHeadAttentionBase):
    """A Python loop over ``num_heads`` single-head :class:`~attnlab.chapter3.CausalAttention` modules."""

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
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, self.head_dim, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )
        self.out_proj = nn.Linear(d_out, d_out)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        context_vec = torch.cat([self._attend_head(head, x) for head in self.heads], dim=-1)  # (b, t, d_out)
        return self.out_proj(context_vec)  # (b, t, d_out)

    @staticmethod
    def _attend_head(head: CausalAttention, x: torch.Tensor) -> torch.Tensor:
        """``head(x)``, the book's single-head causal attention (b, t, d_in) -> (b, t, head_dim), with the
        scores and softmax in float32 for half-precision inputs."""
        t = x.shape[1]
        keys = head.W_key(x)  # (b, t, hd)
        queries = head.W_query(x)  # (b, t, hd)
        values = head.W_value(x)  # (b, t, hd)

        attn_scores = float32_if_half(queries) @ float32_if_half(keys).transpose(1, 2)  # (b, t, t)
        attn_scores.masked_fill_(head.mask.bool()[:t, :t], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, t, t)
        attn_weights = head.dropout(attn_weights.to(values.dtype))  # back to the values' dtype
        return attn_weights @ values  # (b, t, hd)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        hd = self.head_dim
        for i, head in enumerate(self.heads):
            rows = slice(i * hd, (i + 1) * hd)  # this head's slice of the d_out features
            copy_into(head.W_query.weight, weights.W_query[rows])
            copy_into(head.W_key.weight, weights.W_key[rows])
            copy_into(head.W_value.weight, weights.W_value[rows])
            if self.qkv_bias:
                copy_into(head.W_query.bias, weights.b_query[rows])
                copy_into(head.W_key.bias, weights.b_key[rows])
                copy_into(head.W_value.bias, weights.b_value[rows])
        copy_into(self.out_proj.weight, weights.W_out)
        copy_into(self.out_proj.bias, weights.b_out)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        def stacked(get: Callable[[CausalAttention], nn.Parameter]) -> torch.Tensor:
            return torch.cat([pick(get(head)) for head in self.heads])  # (d_out, ...) from h slices

        biases = {}
        if self.qkv_bias:
            biases = {
                "b_query": stacked(lambda head: head.W_query.bias),
                "b_key": stacked(lambda head: head.W_key.bias),
                "b_value": stacked(lambda head: head.W_value.bias),
            }
        return AttentionWeights(
            W_query=stacked(lambda head: head.W_query.weight),
            W_key=stacked(lambda head: head.W_key.weight),
            W_value=stacked(lambda head: head.W_value.weight),
            W_out=pick(self.out_proj.weight),
            b_out=pick(self.out_proj.bias),
            **biases,
        )
