"""Rotary position embeddings (RoPE) and the scaling rules that stretch them past the training context.

RoPE turns each pair of query/key features into a point on a circle and rotates it by ``position * freq``:
a dot product of a rotated query and key then depends on their positions only through the difference.
The frequencies are ``inv_freq[i] = theta ** (-2i / rotary_dim)``; what the scaling types change is
``inv_freq`` (and, for YaRN, one ``attention_factor`` that multiplies cos and sin), written here as
transformers defines them so that a checkpoint's logits match:

- ``linear``: every frequency divided by ``factor`` (positions compressed).
- ``llama3``: wavelengths longer than ``original_context_length / low_freq_factor`` divided by ``factor``,
  shorter than ``original_context_length / high_freq_factor`` kept, a smooth blend between.
- ``yarn``: the same blend with a linear ramp between the dimensions that turn ``beta_fast`` and
  ``beta_slow`` times over the original context, and ``attention_factor = 0.1 ln(factor) + 1`` (or the
  ``mscale``/``mscale_all_dim`` ratio DeepSeek uses).

Pairs are the two halves of the head (``x[..., :d/2]`` with ``x[..., d/2:]``, Llama's layout) or
neighbours (``x[..., 0::2]`` with ``x[..., 1::2]``, ``interleaved``: DeepSeek's).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import RopeConfig

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_frequencies"]


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(config: RopeConfig, rotary_dim: int) -> tuple[torch.Tensor, float]:
    """``inv_freq`` (rotary_dim / 2,) float32 and the attention factor for ``config`` at width ``rotary_dim``."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim  # (rotary_dim / 2,)
    inv_freq = 1.0 / (config.theta**exponents)  # (rotary_dim / 2,)
    if config.rope_type == "default":
        return inv_freq, 1.0
    if config.rope_type == "linear":
        return inv_freq / config.factor, 1.0
    if config.rope_type == "llama3":
        old_context = config.original_context_length
        low_freq_wavelen = old_context / config.low_freq_factor
        high_freq_wavelen = old_context / config.high_freq_factor
        wavelen = 2 * math.pi / inv_freq  # (rotary_dim / 2,)
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / config.factor, inv_freq)
        smooth = (old_context / wavelen - config.low_freq_factor) / (config.high_freq_factor - config.low_freq_factor)
        blended = (1 - smooth) * scaled / config.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(is_medium, blended, scaled), 1.0
    # yarn
    factor = config.factor
    if config.attention_factor is not None:
        attention_factor = config.attention_factor
    elif config.mscale and config.mscale_all_dim:
        attention_factor = _yarn_mscale(factor, config.mscale) / _yarn_mscale(factor, config.mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        """The dimension whose frequency turns ``rotations`` times over the original context."""
        return (
            rotary_dim
            * math.log(config.original_context_length / (rotations * 2 * math.pi))
            / (2 * math.log(config.theta))
        )

    low, high = correction_dim(config.beta_fast), correction_dim(config.beta_slow)
    if config.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (rotary_dim/2,)
    extrapolation = 1 - ramp  # 1: keep the frequency, 0: divide it by factor
    inv_freq = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation  # (rotary_dim / 2,)
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos and sin of ``position * inv_freq`` for given positions, computed in float32, cast to the input's dtype."""

    def __init__(self, config: RopeConfig, rotary_dim: int) -> None:
        super().__init__()
        inv_freq, attention_factor = rope_frequencies(config, rotary_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (rotary_dim / 2,)
        self.attention_factor = attention_factor
        self.interleaved = config.interleaved

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (b, t, rotary_dim) for integer ``positions`` (b, t)."""
        angles = positions[..., None].float() * self.inv_freq.float()  # (b, t, rotary_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (b, t, rotary_dim): the same angle for both halves
        cos = angles.cos() * self.attention_factor  # (b, t, rotary_dim)
        sin = angles.sin() * self.attention_factor  # (b, t, rotary_dim)
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    first, second = x.chunk(2, dim=-1)  # (..., d / 2) each
    return torch.cat([-second, first], dim=-1)  # (..., d)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate ``x`` (b, heads, t, rotary_dim) by the angles of ``cos``/``sin`` (b, t, rotary_dim).

    ``interleaved`` pairs neighbouring features: they are first gathered into the two-halves layout
    (``x[..., 0::2]`` then ``x[..., 1::2]``), which is what transformers does for DeepSeek-V3, so the result is
    in the halves layout too (the dot products of queries and keys are the same either way).
    """
    if interleaved:
        b, heads, t, dim = x.shape
        x = x.view(b, heads, t, dim // 2, 2).transpose(-1, -2).reshape(b, heads, t, dim)  # (b, heads, t, dim)
    cos, sin = cos[:, None], sin[:, None]  # (b, 1, t, rotary_dim): the same rotation for every head
    return x * cos + _rotate_half(x) * sin  # (b, heads, t, rotary_dim)
