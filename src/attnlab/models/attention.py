"""The attention layer of the modern decoders: projections, QK-norm, rotary positions, then any backend.

``DecoderAttention`` projects the input to ``num_heads`` query heads and ``num_kv_heads`` key/value heads of
``head_dim`` features (grouped-query attention when there are fewer key/value heads), optionally normalises
queries and keys per head (QK-norm: Qwen 3, Gemma 3), rotates them by their positions (RoPE), and hands
them to the attention backend named by ``attn_impl`` (:data:`attnlab.backends.BACKENDS`: ``naive``,
``sdpa``, ``flash_torch``, ...) with one :class:`~attnlab.backends.AttentionSpec` built from the layer's
options: causal, its sliding window, the scale, the logit softcap and the sinks. What the backend cannot do
is refused by name when the model is built, never ignored. With a KV cache, the layer cache decides which
stored keys the new queries see (:mod:`.cache`).

``set_core_attention(fn)`` replaces the backend call by ``fn(q, k, v, spec)``: context-parallel training uses
it to attend sequence shards across processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..backends import BACKENDS, AttentionSpec
from .norms import make_norm
from .paged import PagedKV, gather_pages
from .rope import apply_rotary

if TYPE_CHECKING:
    from .cache import CacheStep, LayerCache
    from .config import DecoderConfig

__all__ = ["CoreAttention", "DecoderAttention", "get_backend", "layer_features"]

#: ``fn(q, k, v, spec) -> out``: an attention core that can stand in for a backend.
CoreAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionSpec], torch.Tensor]


def get_backend(attn_impl: str):
    """The backend called ``attn_impl``; ``ValueError`` listing the names when there is none."""
    if attn_impl not in BACKENDS:
        raise ValueError(f"unknown attention implementation {attn_impl!r}; use one of: {', '.join(BACKENDS)}")
    return BACKENDS[attn_impl]


def layer_features(config: DecoderConfig, layer: int) -> tuple[str, ...]:
    """The backend features (names of :data:`attnlab.backends.FEATURES`) that layer ``layer`` needs."""
    wanted = {
        "gqa": config.num_kv_heads != config.num_heads,
        "window": config.layer_windows[layer] is not None,
        "softcap": config.attn_softcap is not None,
        "sinks": config.sinks,
    }
    return tuple(feature for feature, used in wanted.items() if used)


class DecoderAttention(nn.Module):
    """Causal self-attention of layer ``layer`` of a :class:`~.config.DecoderConfig`: (b, t, d_model) -> same."""

    def __init__(self, config: DecoderConfig, layer: int, attn_impl: str) -> None:
        super().__init__()
        self.backend = get_backend(attn_impl)
        self.backend.check_features(layer_features(config, layer))  # refuse by name what it cannot do
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.window = config.layer_windows[layer]
        self.q_proj = nn.Linear(config.d_model, config.q_width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, config.kv_width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, config.kv_width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.q_width, config.d_model, bias=config.out_bias)
        self.q_norm = make_norm(config.norm, config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = make_norm(config.norm, config.head_dim, config.norm_eps) if config.qk_norm else None
        # gpt-oss: one learned logit per head joins each softmax's denominator (see attnlab.backends.spec).
        self.sinks = nn.Parameter(torch.zeros(config.num_heads)) if config.sinks else None  # (h,)
        rope = config.rope_for_layer(layer)
        self.rope_interleaved = rope is not None and rope.interleaved
        self.spec = AttentionSpec(causal=True, scale=config.attn_scale, window=self.window, softcap=config.attn_softcap)
        self.core: CoreAttention | None = None

    def set_core_attention(self, fn: CoreAttention | None) -> None:
        """Use ``fn(q, k, v, spec)`` instead of the backend (None: back to the backend)."""
        self.core = fn

    def new_layer_cache(self, batch: int, max_tokens: int, static: bool) -> LayerCache:
        """The cache this layer needs: a rolling one of ``window`` slots when its window is shorter than
        ``max_tokens``, else one of every position."""
        from .cache import FullLayerCache, RollingLayerCache

        if self.window is not None and self.window < max_tokens:
            return RollingLayerCache(batch, self.window, static)
        return FullLayerCache(batch, max_tokens, static)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # (b, heads, t, hd)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, *, paged: PagedKV | None = None, **fields
    ) -> torch.Tensor:
        """The core on q (b, h, t_q, hd), k/v (b, h_kv, t_k, hd) with this layer's spec (+ per-call ``fields``).
        ``paged``: keys and values are read from pages through block tables instead (k and v are None)."""
        spec = self.spec
        if fields or self.sinks is not None:
            spec = dataclasses.replace(self.spec, sinks=self.sinks, **fields)
        if paged is not None:
            if self.core is not None:
                raise ValueError("a replaced attention core (set_core_attention) cannot read a paged cache")
            if self.backend.paged is not None:
                return self.backend.attend_paged(
                    q, paged.key_pages, paged.value_pages, paged.block_table, paged.kv_lens, spec
                )  # (b, h, t_q, hd)
            keys = gather_pages(paged.key_pages, paged.block_table)  # (b, h_kv, max_blocks * block_size, hd)
            values = gather_pages(paged.value_pages, paged.block_table)  # (b, h_kv, max_blocks * block_size, hd)
            spec = dataclasses.replace(spec, kv_lens=paged.kv_lens.long())
            return self.backend.attend(q, keys, values, spec)  # (b, h, t_q, hd)
        if self.core is not None:
            return self.core(q, k, v, spec)  # (b, h, t_q, hd)
        return self.backend.attend(q, k, v, spec)  # (b, h, t_q, hd)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` (b, t, d_model); ``rope`` the (cos, sin) of the tokens' positions, (b, t, head_dim)."""
        q = self._split(self.q_proj(x), self.num_heads)  # (b, h, t, hd)
        k = self._split(self.k_proj(x), self.num_kv_heads)  # (b, h_kv, t, hd)
        v = self._split(self.v_proj(x), self.num_kv_heads)  # (b, h_kv, t, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # normalised per head, over head_dim
        if rope is not None:
            cos, sin = rope
            q = apply_rotary(q, cos, sin, self.rope_interleaved)  # (b, h, t, hd)
            k = apply_rotary(k, cos, sin, self.rope_interleaved)  # (b, h_kv, t, hd)
        out = self._attend(q, k, v) if cache is None else cache.attend(q, k, v, step, self._attend)  # (b, h, t, hd)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (b, t, d_model)
