"""The one parameter set that every multi-head implementation can load and export.

Each implementation stores its parameters its own way (per-head linears, one fused linear, einsum
matrices, ``nn.MultiheadAttention``'s packed ``in_proj_weight``); :class:`AttentionWeights` is the
common currency between them. Giving two implementations the same ``AttentionWeights`` gives them
the same function, which is how attnlab proves they compute the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

__all__ = ["AttentionWeights"]


@dataclass
class AttentionWeights:
    """Query, key, value and output projections in ``nn.Linear`` layout ``(out_features, in_features)``.

    ``W_query``, ``W_key``, ``W_value`` are ``(d_out, d_in)``; ``W_out`` is ``(d_out, d_out)`` and
    ``b_out`` is ``(d_out,)``. The q/k/v biases are ``(d_out,)`` when the module has ``qkv_bias``,
    else ``None``.
    """

    W_query: torch.Tensor
    W_key: torch.Tensor
    W_value: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor
    b_query: torch.Tensor | None = None
    b_key: torch.Tensor | None = None
    b_value: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.W_query.dim() != 2:
            raise ValueError(f"W_query must be 2-D (d_out, d_in), got shape {tuple(self.W_query.shape)}")
        d_out, d_in = self.W_query.shape
        for name in ("W_key", "W_value"):
            if getattr(self, name).shape != (d_out, d_in):
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, expected {(d_out, d_in)} like W_query"
                )
        if self.W_out.shape != (d_out, d_out):
            raise ValueError(f"W_out has shape {tuple(self.W_out.shape)}, expected {(d_out, d_out)}")
        if self.b_out.shape != (d_out,):
            raise ValueError(f"b_out has shape {tuple(self.b_out.shape)}, expected {(d_out,)}")
        biases = [self.b_query, self.b_key, self.b_value]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("b_query, b_key and b_value must be all given or all None")
        for name, b in zip(("b_query", "b_key", "b_value"), biases, strict=True):
            if b is not None and b.shape != (d_out,):
                raise ValueError(f"{name} has shape {tuple(b.shape)}, expected {(d_out,)}")

    @property
    def d_in(self) -> int:
        return self.W_query.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_query.shape[0]

    @property
    def qkv_bias(self) -> bool:
        return self.b_query is not None

    @classmethod
    def random(
        cls,
        d_in: int,
        d_out: int,
        qkv_bias: bool = False,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> AttentionWeights:
        """Random weights with the scale of ``nn.Linear``'s default initialisation (uniform, 1/sqrt(fan_in))."""

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = fan_in**-0.5
            return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound

        return cls(
            W_query=uniform(d_out, d_in, fan_in=d_in),
            W_key=uniform(d_out, d_in, fan_in=d_in),
            W_value=uniform(d_out, d_in, fan_in=d_in),
            W_out=uniform(d_out, d_out, fan_in=d_out),
            b_out=uniform(d_out, fan_in=d_out),
            b_query=uniform(d_out, fan_in=d_in) if qkv_bias else None,
            b_key=uniform(d_out, fan_in=d_in) if qkv_bias else None,
            b_value=uniform(d_out, fan_in=d_in) if qkv_bias else None,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AttentionWeights:
        """A copy with every tensor moved to ``device`` and/or cast to ``dtype``."""
        return self.map_tensors(lambda t: t.to(device=device, dtype=dtype))

    def detached(self) -> AttentionWeights:
        """A copy of the tensors, detached from any autograd graph."""
        return self.map_tensors(lambda t: t.detach().clone())

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> AttentionWeights:
        """A new AttentionWeights with ``fn`` applied to every tensor that is present."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return AttentionWeights(**{name: None if t is None else fn(t) for name, t in values.items()})
