"""All-gather context parallelism (Llama 3's choice): gather every key and value once, attend locally.

Each rank all-gathers the key/value shards (one collective, cheap next to attention with GQA's few key
heads), puts them back in sequence order, and attends each of its query chunks to the keys that chunk can
see. For causal attention that is the keys up to the chunk's last position, and handing the backend
exactly those makes its bottom-right alignment put every query at its true position: queries
``[s, s + m)`` over keys ``[lo, s + m)`` sit at positions ``s - lo + i`` of the slice. A sliding window
also lets the slice start at ``lo = s - window + 1`` (older keys are invisible). The backward of the
gather reduce-scatters: each rank gets the sum of every rank's gradient for its own key/value shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..backends.spec import AttentionSpec

if TYPE_CHECKING:
    from ..backends import Backend
from .comm import gather_tokens, group_rank
from .layout import SequenceLayout

__all__ = ["all_gather_attention"]


def all_gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SequenceLayout,
    spec: AttentionSpec,
    backend: Backend,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (b, h, t_local, d), lse (b, h, t_local)) of the local queries; ``spec`` asks for the lse."""
    order = layout.rank_major_positions(q.device).argsort()  # (tokens,)
    keys = gather_tokens(k, 2, group).index_select(2, order)  # (b, h_kv, tokens, d), in sequence order
    values = gather_tokens(v, 2, group).index_select(2, order)  # (b, h_kv, tokens, d)
    outs, lses = [], []
    for piece in layout.pieces(group_rank(group)):
        queries = q[:, :, piece.offset : piece.offset + piece.length]  # (b, h, chunk, d)
        lo, hi = 0, layout.tokens  # the keys [lo, hi) this chunk attends to
        if spec.causal:
            hi = piece.start + piece.length
            if spec.window is not None:
                lo = max(0, piece.start - spec.window + 1)
        out, lse = backend.attend(queries, keys[:, :, lo:hi], values[:, :, lo:hi], spec)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)  # (b, h, t_local, d), (b, h, t_local)
