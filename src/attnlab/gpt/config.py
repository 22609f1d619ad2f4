"""The GPT architecture's hyperparameters as a validated dataclass, with the four GPT-2 sizes as presets.

The defaults are GPT-2 small as published (the book's ``GPT_CONFIG_124M`` with ``qkv_bias=True``, which
the OpenAI checkpoints need). Which attention implementation runs the model is not part of the
architecture: it is chosen when the model is built (``GPTModel(config, attn_impl="sdpa")``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["PRESETS", "GPTConfig"]


def _show(value: object) -> str:
    """``repr(value)`` cut short: a config read from a file can hold a huge string or list anywhere."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class GPTConfig:
    """A GPT-2 style decoder: ``n_layers`` pre-LayerNorm blocks of ``n_heads``-head causal attention and a
    4x-wide GELU feed-forward, on ``d_model``-wide token + learned position embeddings."""

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.1  # on embeddings, attention weights and both residual branches
    qkv_bias: bool = True  # GPT-2's checkpoints have query/key/value biases (the book's model has not)
    tie_embeddings: bool = True  # output head shares the token embedding matrix, as GPT-2 does
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {_show(value)}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("dropout", "layer_norm_eps"):  # a JSON config can hold a string or a bool here
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {_show(value)} ({type(value).__name__})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout} must be in [0, 1)")
        if not (math.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        for name in ("qkv_bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {_show(getattr(self, name))}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """The named GPT-2 size (see :data:`PRESETS`), with any field replaced by ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; valid names: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """The config from :meth:`to_dict`'s output; unknown keys are an error, not silently dropped."""
        if not isinstance(values, dict):
            raise ValueError(f"a GPTConfig needs a dict of fields, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            names = sorted(map(repr, unknown))  # repr: a JSON key may hold a newline
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(names[:10])[:300]}")
        return cls(**values)


#: The four published GPT-2 sizes (d_model, layers, heads as in the OpenAI release).
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPTConfig(d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPTConfig(d_model=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPTConfig(d_model=1600, n_layers=48, n_heads=25),
}
