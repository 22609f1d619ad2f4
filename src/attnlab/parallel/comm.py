"""The communication of context parallelism, differentiable where attention needs it.

- :func:`gather_tokens`: every rank's shard, concatenated in rank order (``all_gather_single``); its backward
  reduce-scatters (each rank gets the sum over ranks of the gradient of its own shard).
- :func:`all_to_all`: block ``i`` of the leading axis goes to rank ``i`` (``all_to_all_single``); the
  exchange is its own adjoint, so its backward is the same exchange of the gradients.
- :func:`ring_shift`: point-to-point sends to the next rank and receives from the previous one
  (``batch_isend_irecv``), returned unfinished so that compute can overlap them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_to_all", "gather_tokens", "group_rank", "group_size", "require_initialized", "ring_shift"]

Group = dist.ProcessGroup | None

# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single (same arguments); the project
# supports torch >= 2.5, so take whichever this torch has.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def require_initialized() -> None:
    """Raise ``ValueError`` unless ``torch.distributed`` has a default process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "context parallelism needs torch.distributed initialised on every rank "
            "(torch.distributed.init_process_group) before it is called"
        )


def group_size(group: Group) -> int:
    return dist.get_world_size(group)


def group_rank(group: Group) -> int:
    return dist.get_rank(group)


def _global_rank(group: Group, rank: int) -> int:
    """Point-to-point peers are named by their global rank."""
    return rank if group is None else dist.get_global_rank(group, rank)


class _GatherTokens(torch.autograd.Function):
    """All-gather along ``dim``; backward: reduce-scatter of the gradient along ``dim``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        world = group_size(group)
        local = x.movedim(dim, 0).contiguous()  # (t_local, ...)
        gathered = local.new_empty((world * local.shape[0], *local.shape[1:]))  # (world * t_local, ...)
        _all_gather_single(gathered, local, group=group)
        return gathered.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = group_size(ctx.group)
        full = grad.movedim(ctx.dim, 0).contiguous()  # (world * t_local, ...)
        local = full.new_empty((full.shape[0] // world, *full.shape[1:]))  # (t_local, ...)
        _reduce_scatter_single(local, full, op=dist.ReduceOp.SUM, group=ctx.group)
        return local.movedim(0, ctx.dim), None, None


def gather_tokens(x: torch.Tensor, dim: int, group: Group = None) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (differentiable: backward reduce-scatters)."""
    return _GatherTokens.apply(x, dim, group)


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` on the leading axis; the adjoint of the exchange is the exchange itself."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()  # the exchange splits memory along the leading axis
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def all_to_all(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """x (world, ...): block ``i`` is sent to rank ``i``; block ``i`` of the result came from rank ``i``."""
    return _AllToAll.apply(x, group)


def ring_shift(tensors: list[torch.Tensor], group: Group = None) -> tuple[list[torch.Tensor], list]:
    """Send each tensor to the next rank and receive the previous rank's, without waiting.

    Returns ``(received, works)``: the receive buffers are valid only after ``work.wait()`` for every work.
    The tensors must be contiguous (a temporary copy could be freed while it is still being sent).
    """
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("ring_shift sends contiguous tensors only; call .contiguous() first")
    world, rank = group_size(group), group_rank(group)
    if world == 1:
        return list(tensors), []
    send_to, recv_from = _global_rank(group, (rank + 1) % world), _global_rank(group, (rank - 1) % world)
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, send_to, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, buffer, recv_from, group) for buffer in received]
    return received, dist.batch_isend_irecv(ops)
