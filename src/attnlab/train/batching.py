"""This rank's part of a global batch: its data-parallel rows and, with context parallelism, its tokens.

With ``cp`` context-parallel ranks a sequence is cut into ``2 cp`` chunks and rank ``r`` holds chunks ``r``
and ``2 cp - 1 - r`` (the load-balanced layout of :mod:`attnlab.parallel.layout`); ``positions`` are those
tokens' absolute positions, which the model needs for its position encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..parallel.layout import SequenceLayout

if TYPE_CHECKING:
    from .distributed import Ranks

__all__ = ["local_batch"]


def local_batch(
    inputs: torch.Tensor, targets: torch.Tensor, ranks: Ranks
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, positions) of this rank: rows ``data_rank`` of ``data_ranks`` (b / data_ranks, t), then,
    with context parallelism, its tokens (b / data_ranks, t / cp) and their positions (t / cp,); else None."""
    per_rank = inputs.shape[0] // ranks.data_ranks
    rows = slice(ranks.data_rank * per_rank, (ranks.data_rank + 1) * per_rank)
    inputs, targets = inputs[rows], targets[rows]  # (b_l, t)
    if ranks.cp_size == 1:
        return inputs, targets, None
    layout = SequenceLayout(inputs.shape[1], ranks.cp_size, load_balance=True)
    positions = torch.cat([torch.arange(p.start, p.start + p.length) for p in layout.pieces(ranks.cp_rank)])  # (t_l,)
    return inputs[:, positions], targets[:, positions], positions  # (b_l, t_l), (b_l, t_l), (t_l,)
