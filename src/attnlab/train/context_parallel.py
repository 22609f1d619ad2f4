"""Context parallelism in training: every layer's attention runs over sequence shards held by several ranks.

The ranks of one context-parallel group hold the same rows, each ``1 / cp`` of every sequence's tokens (the
load-balanced layout, see :mod:`.batching`). Everything in a decoder but attention works token by token, so
only the attention core changes: :func:`context_parallel_core` is handed to
``Decoder.set_core_attention`` and calls :func:`attnlab.parallel.context_parallel_attention` with the
layer's own options (causal, window, scale, softcap, sinks). The rotary embedding gets the shard's
absolute positions from the ``positions`` argument.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..backends import AttentionSpec
from ..parallel import context_parallel_attention

if TYPE_CHECKING:
    from ..models.attention import CoreAttention
    from .distributed import Ranks

__all__ = ["context_parallel_core"]


def _spec_options(spec: AttentionSpec) -> dict[str, object]:
    """The spec's fields that differ from their defaults, as backend keywords."""
    options = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if isinstance(value, torch.Tensor) or value != field.default:
            options[field.name] = value
    return options


def context_parallel_core(ranks: Ranks, strategy: str, backend: str) -> CoreAttention:
    """An attention core ``fn(q, k, v, spec)`` attending this rank's shard over its group's whole sequence."""

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
        return context_parallel_attention(  # (b, h, t_local, head_dim)
            q, k, v, strategy=strategy, backend=backend, group=ranks.cp_group, load_balance=True, **_spec_options(spec)
        )

    return core
