"""Paged attention as a Triton kernel (:mod:`attnlab.kernels.paged_decode`), forward only.

The algorithm of :mod:`attnlab.backends.paged_torch` (its docstring explains the layout and semantics),
compiled: one program per (batch row, key/value head, block of packed query rows) streams the row's pages
with the online softmax. GQA/MQA, sliding windows, softcap, ALiBi, sinks and the returned lse; float16,
bfloat16 and float32 (true float32 products); head dims up to 256. The page (``block_size``) is the kernel's
key tile, so it must be a power of two of at least 16 (vLLM's default is 16).

**Splits.** With few rows and heads a long context would run few programs, so each row's pages can also be
cut into ``num_splits`` runs processed in parallel (flash-decoding, :mod:`.flash_decode_torch` explains it;
vLLM's PagedAttention v2 does the same): each writes a partial output and lse, and the reduce kernel of
:mod:`attnlab.kernels.flash_decode` merges them. The default count is flash-decoding's heuristic
(:func:`~attnlab.backends.flash_decode_torch.default_num_splits`) for the table's ``max_blocks * block_size``
keys, so it needs no device sync.

On CUDA tensors the kernel is compiled; on CPU tensors it runs in Triton's interpreter, which needs
``TRITON_INTERPRET=1`` in the environment before Triton is first imported (see :mod:`.flash_triton`).
"""

from __future__ import annotations

import torch

from .flash_decode_torch import default_num_splits
from .flash_triton import check_kernel_inputs
from .paged_torch import FEATURES as TORCH_FEATURES
from .paged_torch import check_paged_inputs, check_paged_values
from .spec import AttentionSpec

__all__ = ["FEATURES", "MIN_BLOCK_SIZE", "paged_triton_attention"]

#: The optional features of :class:`AttentionSpec` the kernel does (as paged_torch).
FEATURES: frozenset[str] = TORCH_FEATURES
#: Packed query rows per program at most (more rows: more row blocks in the grid).
MAX_BLOCK_M = 64
#: The smallest page the kernel takes (``tl.dot`` needs 16 along each axis).
MIN_BLOCK_SIZE = 16


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def paged_triton_attention(
    q: torch.Tensor,
    key_pages: torch.Tensor,
    value_pages: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    spec: AttentionSpec,
    *,
    check_values: bool = True,
    num_splits: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The paged kernel on q (b, h, t_q, d) -> out (b, h, t_q, d) [, lse (b, h, t_q) float32].

    ``key_pages``, ``value_pages`` (num_blocks, h_kv, block_size, d); ``block_table`` int (b, max_blocks);
    ``kv_lens`` int (b,). Semantics of :func:`attnlab.backends.paged_torch.paged_torch_attention`.
    ``check_values=False`` skips :func:`~attnlab.backends.paged_torch.check_paged_values`, the one device sync
    (a table entry outside the pool then reads out of bounds: pass tables and lengths a PagedKVCache built).
    ``num_splits``: flash-decoding's splits of each row's pages (default: ``default_num_splits`` of the
    table's ``max_blocks * block_size`` keys; clamped to one page per split at least).
    """
    if num_splits is not None and (not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    check_paged_inputs("paged_triton", q, key_pages, value_pages, block_table, kv_lens, spec, FEATURES)
    if check_values:
        check_paged_values(key_pages, block_table, kv_lens)
    check_kernel_inputs(q, "paged_triton")
    b, h, t_q, head_dim = q.shape
    h_kv, block_size = key_pages.shape[1], key_pages.shape[2]
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise ValueError(
            f"paged_triton needs a block_size that is a power of two >= {MIN_BLOCK_SIZE}, got {block_size}"
        )
    group = h // h_kv
    rows = group * t_q  # packed rows per key/value head
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)  # (b, h, t_q, d)
    lse = torch.full((b, h, t_q), float("-inf"), dtype=torch.float32, device=q.device)  # (b, h, t_q)
    if b * rows == 0:
        return (out, lse) if spec.return_lse else out

    import triton

    from ..kernels.flash_decode import flash_decode_reduce_kernel
    from ..kernels.interpreter_compat import apply_interpreter_fix
    from ..kernels.paged_decode import paged_decode_kernel

    apply_interpreter_fix()
    block_m = min(max(16, triton.next_power_of_2(rows)), MAX_BLOCK_M)  # tl.dot needs 16 rows at least
    block_d = max(16, triton.next_power_of_2(head_dim))
    max_blocks = max(block_table.shape[1], 1)
    if num_splits is None:
        num_splits = default_num_splits(max_blocks * block_size, b * h_kv, q.device)
    pages_per_split = triton.cdiv(max_blocks, min(num_splits, max_blocks))
    splits = triton.cdiv(max_blocks, pages_per_split)
    partial_out = partial_lse = None
    if splits > 1:  # (b*h_kv, S, R, d) and (b*h_kv, S, R), merged by the reduce kernel below
        partial_out = torch.empty(b * h_kv, splits, rows, head_dim, dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(b * h_kv, splits, rows, dtype=torch.float32, device=q.device)
    sinks = None if spec.sinks is None else spec.sinks.detach()
    slopes = None if spec.alibi_slopes is None else spec.alibi_slopes.detach()
    on_cuda = q.device.type == "cuda"
    paged_decode_kernel[(b * h_kv, splits, triton.cdiv(rows, block_m))](
        q, key_pages, value_pages, block_table, kv_lens, out, lse, sinks, slopes, partial_out, partial_lse,
        *_strides(q), *_strides(key_pages), *_strides(value_pages), *_strides(block_table), *_strides(out),
        h_kv, t_q, rows, spec.scale_for(head_dim), 1.0 if spec.softcap is None else float(spec.softcap),
        0 if spec.window is None else spec.window, pages_per_split, splits,
        CAUSAL=spec.causal, WINDOW=spec.window is not None, SOFTCAP=spec.softcap is not None,
        ALIBI=slopes is not None, SINKS=sinks is not None, SPLIT=splits > 1, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_size,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if on_cuda else 1, num_stages=2 if on_cuda else 1,
    )  # fmt: skip
    if splits > 1:
        flash_decode_reduce_kernel[(b * h_kv * rows,)](
            partial_out, partial_lse, out, lse, sinks,
            *_strides(out),
            h_kv, t_q, rows, splits,
            SINKS=sinks is not None, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d,
            BLOCK_S=max(2, triton.next_power_of_2(splits)),
            num_warps=1,
        )  # fmt: skip
    return (out, lse) if spec.return_lse else out
