"""Ring attention: key/value shards travel around the ring while each rank attends its queries to them.

Forward, on rank ``r`` of ``N``: at step ``s`` the rank holds the keys/values of rank ``(r - s) mod N``. It
starts sending them on to rank ``r + 1`` (and receiving rank ``r - s - 1``'s from rank ``r - 1``), attends its
query chunks to the key chunks it holds (:mod:`attnlab.parallel.blocks` picks full, diagonal, band or skip
from their global positions) while the transfer runs, and merges each partial result into its running
output on the log-sum-exp (:mod:`attnlab.parallel.merge`). After ``N`` steps it has seen every key, and no
rank ever held more than two shards of keys/values.

Backward (a custom ``autograd.Function``): the keys/values go around the ring again, each travelling with
the gradient ``dk, dv`` accumulated for them so far. At each step a rank recomputes its blocks against the
shard it holds under autograd, feeds them the gradients the merge gives each part (``merge.part_grads``),
adds its ``dk, dv`` to the travelling ones and passes them on; after ``N`` steps the sums are home. No rank
gathers the full sequence, forward or backward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..backends.spec import AttentionSpec
from .blocks import Attend, block_attention
from .comm import group_rank, group_size, ring_shift
from .layout import Piece, SequenceLayout
from .merge import merge_into, part_grads

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["ring_attention"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Partial results merge in float32 (float64 for float64 inputs), like the backends' lse."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(
    layout: SequenceLayout,
    rank: int,
    source: int,
    causal: bool,
    window: int | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attend: Attend,
) -> Iterator[tuple[Piece, tuple[torch.Tensor, torch.Tensor]]]:
    """Yield (query piece, (out, lse)) for each visible (local query chunk, ``source`` key chunk) pair."""
    for q_piece in layout.pieces(rank):
        q_rows = q[:, :, q_piece.offset : q_piece.offset + q_piece.length]  # (b, h, chunk, d)
        for k_piece in layout.pieces(source):
            keys = slice(k_piece.offset, k_piece.offset + k_piece.length)
            result = block_attention(
                q_rows, k[:, :, keys], v[:, :, keys], q_piece.start, k_piece.start, causal, window, attend
            )
            if result is not None:
                yield q_piece, result


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, causal, window, attend, group):
        world, rank = group_size(group), group_rank(group)
        acc = _acc_dtype(q.dtype)
        out = q.new_zeros(q.shape, dtype=acc)  # (b, h, t_local, d)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)  # (b, h, t_local)
        kv = [k.contiguous(), v.contiguous()]
        for step in range(world):
            pending = ring_shift(kv, group) if step < world - 1 else ([], [])  # overlap: next shard is on its way
            for piece, (out_part, lse_part) in _blocks(
                layout, rank, (rank - step) % world, causal, window, q, *kv, attend
            ):
                rows = slice(piece.offset, piece.offset + piece.length)
                merge_into(out[:, :, rows], lse[:, :, rows], out_part.to(acc), lse_part.to(acc))
            for work in pending[1]:
                work.wait()
            kv = pending[0] or kv
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.causal, ctx.window, ctx.attend, ctx.group = layout, causal, window, attend, group
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        world, rank = group_size(ctx.group), group_rank(ctx.group)
        acc = out.dtype
        dout, dlse = dout.to(acc), dlse.to(acc)
        q_leaf = q.detach().requires_grad_()
        dq = torch.zeros_like(out)  # (b, h, t_local, d)
        kv = [k.detach().contiguous(), v.detach().contiguous()]
        dkv = [torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device)]
        for step in range(world):
            pending = ring_shift(kv, ctx.group) if step < world - 1 else ([], [])
            k_leaf, v_leaf = (t.requires_grad_() for t in (kv[0].detach(), kv[1].detach()))
            source = (rank - step) % world
            with torch.enable_grad():
                for piece, (out_part, lse_part) in _blocks(
                    ctx.layout, rank, source, ctx.causal, ctx.window, q_leaf, k_leaf, v_leaf, ctx.attend
                ):
                    rows = slice(piece.offset, piece.offset + piece.length)
                    dout_part, dlse_part = part_grads(
                        dout[:, :, rows],
                        dlse[:, :, rows],
                        out[:, :, rows],
                        lse[:, :, rows],
                        out_part.detach().to(acc),
                        lse_part.detach().to(acc),
                    )
                    grads = torch.autograd.grad(
                        (out_part, lse_part),
                        (q_leaf, k_leaf, v_leaf),
                        (dout_part.to(out_part.dtype), dlse_part.to(lse_part.dtype)),
                        allow_unused=True,
                    )
                    for total, grad in zip((dq, *dkv), grads, strict=True):
                        if grad is not None:
                            total.add_(grad)
            for work in pending[1]:
                work.wait()
            kv = pending[0] or kv
            # the gradient of the shard just used travels on with it; the last hop brings every shard's home
            received, works = ring_shift([t.contiguous() for t in dkv], ctx.group)
            for work in works:
                work.wait()
            dkv = received
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SequenceLayout,
    spec: AttentionSpec,
    backend: Backend,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The local output (b, h, t_local, d) [, lse (b, h, t_local)] over the whole sharded sequence.

    Inputs already checked. The blocks run ``backend`` with the call's scale and softcap (their positions
    decide causal and window); the sinks join once, after the merge, as one more term of the denominator:
    ``out * Z / (Z + e^sink) = out * sigmoid(lse - sink)``.
    """
    block_spec = AttentionSpec(causal=spec.causal, scale=spec.scale, softcap=spec.softcap, return_lse=True)

    def attend(q_blk, k_blk, v_blk, causal: bool, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return backend.attend(q_blk, k_blk, v_blk, dataclasses.replace(block_spec, causal=causal, window=window))

    out, lse = _RingAttention.apply(q, k, v, layout, spec.causal, spec.window, attend, group)  # float32/64
    if spec.sinks is not None:
        sinks = spec.sinks.to(lse.dtype).view(1, -1, 1)  # (1, h, 1)
        out = out * torch.sigmoid(lse - sinks).unsqueeze(-1)  # (b, h, t_local, d)
    out = out.to(q.dtype)
    return (out, lse) if spec.return_lse else out
