"""One decoder block: attention then feed-forward, each around a norm and a residual connection.

``pre_norm`` (GPT-2, Llama and most others): ``x + attn(norm(x))``, then ``x + ffn(norm(x))``.
``sandwich`` (Gemma 2/3): each branch's output is normalised again before it joins the residual stream,
``x + norm(attn(norm(x)))``. Which attention (grouped-query, or multi-head latent) and which feed-forward
(dense, or a mixture of experts) a layer gets follows from the config, here and only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .attention import DecoderAttention
from .feedforward import make_feedforward
from .norms import make_norm

if TYPE_CHECKING:
    from .cache import CacheStep, LayerCache
    from .config import DecoderConfig

__all__ = ["DecoderBlock", "make_attention", "make_ffn"]


def make_attention(config: DecoderConfig, layer: int, attn_impl: str) -> nn.Module:
    """Multi-head latent attention when ``config.mla`` is set, else grouped-query attention."""
    if config.mla is not None:
        from .mla import LatentAttention  # imported when used: most models never need it

        return LatentAttention(config, layer, attn_impl)
    return DecoderAttention(config, layer, attn_impl)


def make_ffn(config: DecoderConfig, layer: int) -> nn.Module:
    """A mixture of experts on the layers that have one, else the dense feed-forward of width ``d_ff``."""
    if config.moe is not None and layer >= config.moe.dense_layers:
        from .moe import MoEFeedForward  # imported when used

        return MoEFeedForward(config)
    kind = "swiglu" if config.ffn == "moe" else config.ffn  # MoE models' dense layers are SwiGLU
    return make_feedforward(kind, config.d_model, config.d_ff, config.ffn_bias)


class DecoderBlock(nn.Module):
    """Layer ``layer`` of a decoder: (b, t, d_model) -> (b, t, d_model)."""

    def __init__(self, config: DecoderConfig, layer: int, attn_impl: str) -> None:
        super().__init__()
        self.sandwich = config.block == "sandwich"
        self.attn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.attn = make_attention(config, layer, attn_impl)
        self.attn_post_norm = make_norm(config.norm, config.d_model, config.norm_eps) if self.sandwich else None
        self.ffn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.ffn = make_ffn(config, layer)
        self.ffn_post_norm = make_norm(config.norm, config.d_model, config.norm_eps) if self.sandwich else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        attended = self.attn(self.attn_norm(x), rope, cache, step)  # (b, t, d_model)
        if self.attn_post_norm is not None:
            attended = self.attn_post_norm(attended)
        x = x + attended  # (b, t, d_model)
        transformed = self.ffn(self.ffn_norm(x))  # (b, t, d_model)
        if self.ffn_post_norm is not None:
            transformed = self.ffn_post_norm(transformed)
        return x + transformed  # (b, t, d_model)
