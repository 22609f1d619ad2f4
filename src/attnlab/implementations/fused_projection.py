"""A multi-head module with one fused q/k/v projection that hands the attention core to a backend.

Several implementations differ only in the core they call (naive matmuls, SDPA, FlexAttention,
FlashAttention); they subclass :class:`FusedQKVBackendAttention` and name their backend
(``backend = "name"``). Each gets the KV-cache path for free: the backends align the causal mask
bottom-right, so the new queries attend every cached key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ..backends import BACKENDS
from ..weights import AttentionWeights
from .base import MultiHeadAttentionBase, copy_into
from .kv_cache import LayerKVCache

__all__ = ["FusedQKVBackendAttention"]


class FusedQKVBackendAttention(MultiHeadAttentionBase):
    """One ``nn.Linear(d_in, 3 * d_out)`` for queries, keys and values; the core from ``BACKENDS[backend]``."""

    backend: ClassVar[str]

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
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)  # rows: all queries, then keys, then values
        self.out_proj = nn.Linear(d_out, d_out)

    def _project_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (b, t, d_in), each (b, h, t, hd), from one matmul."""
        b, t, _ = x.shape
        qkv = self.qkv(x)  # (b, t, 3 * d_out)
        qkv = qkv.view(b, t, 3, self.num_heads, self.head_dim)  # (b, t, 3, h, hd)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # 3 x (b, h, t, hd)
        return queries, keys, values

    def _attend_heads(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The backend's causal core (bottom-right aligned when t_q < t_k) plus the output projection."""
        context_vec = BACKENDS[self.backend](
            queries, keys, values, causal=True, dropout_p=self.attn_dropout_p
        )  # (b, h, t_q, hd)
        return self.out_proj(self.merge_heads(context_vec))  # (b, t_q, d_out)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend_heads(*self._project_heads(x))  # (b, t, d_out)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        queries, keys, values = self._project_heads(x)  # 3 x (b, h, t, hd)
        keys, values = cache.append(keys, values)  # (b, h, t_cached + t, hd) each
        # The t new queries are the last t positions: the backends' bottom-right causal alignment.
        return self._attend_heads(queries, keys, values)  # (b, t, d_out)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        copy_into(self.qkv.weight, torch.cat([weights.W_query, weights.W_key, weights.W_value]))  # (3*d_out, d_in)
        if self.qkv_bias:
            copy_into(self.qkv.bias, torch.cat([weights.b_query, weights.b_key, weights.b_value]))  # (3*d_out,)
        copy_into(self.out_proj.weight, weights.W_out)
        copy_into(self.out_proj.bias, weights.b_out)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        W_query, W_key, W_value = pick(self.qkv.weight).chunk(3)  # 3 x (d_out, d_in)
        b_query = b_key = b_value = None
        if self.qkv_bias:
            b_query, b_key, b_value = pick(self.qkv.bias).chunk(3)  # 3 x (d_out,)
        return AttentionWeights(
            W_query=W_query,
            W_key=W_key,
            W_value=W_value,
            W_out=pick(self.out_proj.weight),
            b_out=pick(self.out_proj.bias),
            b_query=b_query,
            b_key=b_key,
            b_value=b_value,
        )
