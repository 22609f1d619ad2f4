"""Ulysses (DeepSpeed) context parallelism: trade the sequence shard for a head shard and back.

An all-to-all turns each rank's ``(b, h, t/N, d)`` sequence shard into ``(b, h/N, t, d)``: the whole sequence
for ``h/N`` of the heads. Heads are independent, so any backend then runs ordinary attention on the full
sequence (every feature it has, positions exact), and a second all-to-all returns the output to sequence
shards. The heads and the key/value heads must both divide by ``N``. The all-to-all is its own adjoint,
so the backward is two all-to-alls of the gradients.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..backends.spec import AttentionSpec

if TYPE_CHECKING:
    from ..backends import Backend
from .comm import all_to_all, group_rank, group_size
from .layout import SequenceLayout

__all__ = ["ulysses_attention"]


def _to_heads(x: torch.Tensor, world: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """(b, h, t_local, d) sequence shard -> (b, h/world, world * t_local, d), tokens in rank order."""
    b, h, t_local, d = x.shape
    blocks = x.reshape(b, world, h // world, t_local, d).movedim(1, 0)  # (world, b, h/world, t_local, d)
    received = all_to_all(blocks, group)  # (world, b, h/world, t_local, d): block i is rank i's tokens
    return received.movedim(0, 2).reshape(b, h // world, world * t_local, d)


def _to_tokens(x: torch.Tensor, world: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """(b, h/world, world * t_local, d), tokens in rank order -> (b, h, t_local, d) sequence shard."""
    b, heads, tokens, d = x.shape
    blocks = x.reshape(b, heads, world, tokens // world, d).movedim(2, 0)  # (world, b, h/world, t_local, d)
    received = all_to_all(blocks, group)  # (world, b, h/world, t_local, d): block i is head group i
    return received.movedim(0, 1).reshape(b, world * heads, tokens // world, d)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SequenceLayout,
    spec: AttentionSpec,
    backend: Backend,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The local output (b, h, t_local, d) [, lse (b, h, t_local)]; inputs and head counts already checked."""
    world, rank = group_size(group), group_rank(group)
    positions = layout.rank_major_positions(q.device)  # (tokens,)
    order = positions.argsort()  # (tokens,)
    q_full, k_full, v_full = (_to_heads(x, world, group).index_select(2, order) for x in (q, k, v))
    heads = slice(rank * q.shape[1] // world, (rank + 1) * q.shape[1] // world)  # this rank's query heads
    local_spec = dataclasses.replace(
        spec,
        sinks=None if spec.sinks is None else spec.sinks[heads],
        alibi_slopes=None if spec.alibi_slopes is None else spec.alibi_slopes[heads],
    )
    result = backend.attend(q_full, k_full, v_full, local_spec)  # (b, h/world, tokens, d) [, lse]
    out, lse = result if spec.return_lse else (result, None)
    out = _to_tokens(out.index_select(2, positions), world, group)  # (b, h, t_local, d)
    if lse is None:
        return out
    lse = _to_tokens(lse.index_select(2, positions).unsqueeze(-1), world, group).squeeze(-1)  # (b, h, t_local)
    return out, lse
