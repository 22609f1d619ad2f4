"""A multi-head module with one fused q/k/v projection that hands the attention core to a backend.

Several implementations differ only in the core they call (naive matmuls, SDPA, FlexAttention,
FlashAttention); they subclass :class:`FusedQKVBackendAttention` and name their backend
(``backend = "name"``). Everything else follows from that name:

- their :class:`~attnlab.implementations.base.Capabilities` are the backend's (features such as GQA,
  windows, softcapping, sinks and dropout; where there is no backward pass; the packages and devices it
  needs), derived once when the subclass is defined, never repeated by hand;
- the layer's options become one :class:`~attnlab.backends.AttentionSpec`, built at construction; each call
  adds the current sinks parameter and dropout (zero in eval mode);
- keys and values keep their ``num_kv_heads`` heads all the way into the backend and into the KV cache (no
  repeated heads: with GQA the cache is ``num_heads / num_kv_heads`` times smaller);
- the KV-cache path comes for free: the backends align positions bottom-right, so the new queries attend
  every cached key, and a window counts back from each query's absolute position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from ..backends import BACKENDS, AttentionSpec
from ..weights import AttentionWeights
from .base import Capabilities, MultiHeadAttentionBase, copy_into
from .kv_cache import LayerKVCache

__all__ = ["FusedQKVBackendAttention"]


class FusedQKVBackendAttention(MultiHeadAttentionBase):
    """One ``nn.Linear(d_in, d_out + 2 * d_kv)`` for queries, keys and values; the core from ``BACKENDS[backend]``.

    ``d_kv = num_kv_heads * head_dim`` is ``d_out`` without GQA, so the projection is then ``3 * d_out`` wide.
    """

    backend: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass that names its ``backend`` gets that backend's capabilities (unless it declares its own)."""
        super().__init_subclass__(**kwargs)
        if "backend" in cls.__dict__ and "capabilities" not in cls.__dict__:
            if cls.backend not in BACKENDS:
                raise ValueError(f"{cls.__name__}.backend {cls.backend!r} is not one of: {', '.join(BACKENDS)}")
            cls.capabilities = Capabilities.from_backend(BACKENDS[cls.backend])

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
        # rows: all queries (d_out), then keys (d_kv), then values (d_kv)
        self.qkv = nn.Linear(d_in, self.d_out + 2 * self.d_kv, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        # The layer's options, once; sinks (a parameter) and the dropout of the moment are added per call.
        self.spec = AttentionSpec(causal=True, window=self.window, softcap=self.softcap, dropout_p=self.dropout_p)

    def _project_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (b, h, t, hd) and keys, values (b, h_kv, t, hd) of x (b, t, d_in), from one matmul."""
        qkv = self.qkv(x)  # (b, t, d_out + 2 * d_kv)
        queries, keys, values = qkv.split([self.d_out, self.d_kv, self.d_kv], dim=-1)  # (b, t, d_out), 2 x (b, t, d_kv)
        return self.split_heads(queries), self.split_heads(keys), self.split_heads(values)  # (b, h | h_kv, t, hd)

    def _attend_heads(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, **per_call
    ) -> torch.Tensor:
        """The backend's core on queries (b, h, t_q, hd) and keys/values (b, h_kv, t_k, hd), bottom-right
        aligned when t_q < t_k, plus the output projection. ``per_call``: spec fields of this call (seq_lens)."""
        spec = dataclasses.replace(self.spec, sinks=self.sinks, dropout_p=self.attn_dropout_p, **per_call)
        context_vec = BACKENDS[self.backend].attend(queries, keys, values, spec)  # (b, h, t_q, hd)
        return self.out_proj(self.merge_heads(context_vec))  # (b, t_q, d_out)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend_heads(*self._project_heads(x))  # (b, t, d_out)

    @classmethod
    def supports_packed_sequences(cls) -> bool:
        """Packing is the backend's ``seq_lens`` feature."""
        return "seq_lens" in BACKENDS[cls.backend].features

    def attend_packed(self, x: torch.Tensor, seq_lens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return self._attend_heads(*self._project_heads(x), seq_lens=seq_lens)  # (b, t, d_out)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        queries, keys, values = self._project_heads(x)  # (b, h, t, hd), 2 x (b, h_kv, t, hd)
        keys, values = cache.append(keys, values)  # (b, h_kv, t_cached + t, hd) each
        # The t new queries are the last t positions: the backends' bottom-right alignment.
        return self._attend_heads(queries, keys, values)  # (b, t, d_out)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        copy_into(self.qkv.weight, torch.cat([weights.W_query, weights.W_key, weights.W_value]))  # (d_out+2d_kv, d_in)
        if self.qkv_bias:
            copy_into(self.qkv.bias, torch.cat([weights.b_query, weights.b_key, weights.b_value]))  # (d_out+2d_kv,)
        copy_into(self.out_proj.weight, weights.W_out)
        copy_into(self.out_proj.bias, weights.b_out)
        self._load_sinks(weights)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        widths = [self.d_out, self.d_kv, self.d_kv]
        W_query, W_key, W_value = pick(self.qkv.weight).split(widths)  # (d_out, d_in), 2 x (d_kv, d_in)
        b_query = b_key = b_value = None
        if self.qkv_bias:
            b_query, b_key, b_value = pick(self.qkv.bias).split(widths)  # (d_out,), 2 x (d_kv,)
        return AttentionWeights(
            W_query=W_query,
            W_key=W_key,
            W_value=W_value,
            W_out=pick(self.out_proj.weight),
            b_out=pick(self.out_proj.bias),
            b_query=b_query,
            b_key=b_key,
            b_value=b_value,
            sinks=self._export_sinks(pick),
        )
