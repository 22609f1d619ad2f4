"""Split a full tensor into this rank's shard, and gather the shards back (:func:`shard`, :func:`unshard`)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import gather_tokens, group_rank, group_size, require_initialized
from .layout import SequenceLayout

__all__ = ["shard", "unshard"]


def _check_dim(x: torch.Tensor, dim: int, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(dim, int) or isinstance(dim, bool) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim!r} is out of range for a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def shard(
    x: torch.Tensor, dim: int = 2, *, group: dist.ProcessGroup | None = None, load_balance: bool = True
) -> torch.Tensor:
    """This rank's part of the full tensor ``x`` along ``dim`` (the token axis of (b, h, t, head_dim) by default).

    With ``load_balance`` the rank holds chunks ``r`` and ``2N - 1 - r`` of ``2N``, concatenated; without, chunk
    ``r`` of ``N`` (see :mod:`attnlab.parallel.layout`). No communication: every rank holds ``x`` already.
    Differentiable (slicing).
    """
    dim = _check_dim(x, dim, "x")
    require_initialized()
    layout = SequenceLayout(x.shape[dim], group_size(group), load_balance)
    pieces = layout.pieces(group_rank(group))
    return torch.cat([x.narrow(dim, piece.start, piece.length) for piece in pieces], dim=dim)  # (..., t/N, ...)


def unshard(
    x_local: torch.Tensor, dim: int = 2, *, group: dist.ProcessGroup | None = None, load_balance: bool = True
) -> torch.Tensor:
    """The full tensor from every rank's shard (the inverse of :func:`shard`); every rank gets all of it.

    Every rank must pass a shard of the same shape. Differentiable: the gradient of a rank's shard is the sum
    over ranks of the gradient each rank's full tensor received at that shard (a reduce-scatter), as when
    every rank computes its part of one loss from the full tensor.
    """
    dim = _check_dim(x_local, dim, "x_local")
    require_initialized()
    layout = SequenceLayout.from_local(x_local.shape[dim], group_size(group), load_balance)
    gathered = gather_tokens(x_local, dim, group)  # shards in rank order along dim
    order = layout.rank_major_positions(x_local.device).argsort()  # (tokens,)
    return gathered.index_select(dim, order)
