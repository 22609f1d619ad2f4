"""Pieces shared by the FlashAttention kernels: which block a program owns, which keys a query sees (and which
queries see a key), how a loop over tiles splits into its ``masked`` and ``unmasked`` phases, and tile loads
and stores of ``(rows, head_dim)`` blocks, masked only where a bound can be crossed.

Visibility has one representation, the one of :func:`attnlab.backends.common.key_bounds`: query ``i`` sees
exactly the keys ``lo_i <= j <= hi_i``. Causal attention caps ``hi_i`` at the query's position, a window
raises ``lo_i``, packed sequences clip both to the query's own sequence. Both bounds never decrease from one
query to the next, so the keys seen by a block of queries are bounded by its first and last rows, and the
queries that see one key form an interval too (:func:`query_bounds`, the same rule transposed).

The feature flags (``CAUSAL``, ``WINDOW``, ``PACKED``), ``INT64_ROWS``, ``CHECK_ROWS`` and the head-dim padding
(``BLOCK_D > HEAD_DIM`` when the head dim is not a power of two) are compile-time constants, so a kernel
compiled without a feature carries none of its code, and interior tiles compile to plain unmasked loads.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["key_bounds", "load_tile", "loop_phases", "program_block", "query_bounds", "store_tile", "tile_ptrs"]


@triton.jit
def program_block(num_heads, BLOCK: tl.constexpr, HEAVY_LAST: tl.constexpr):
    """This program's (batch, head, first row of its block); the grid is (b * heads, blocks).

    Batch and head come back as int64, so the offsets ``batch * stride_b`` built from them cannot overflow.
    ``HEAVY_LAST``: the block index counts down, so the blocks that hold the most causal work (the last
    query blocks) start first; the grid runs block 0 of every head first, and a long block launched last
    would otherwise run alone at the end.
    """
    off_bh = tl.program_id(0)
    block = tl.program_id(1)
    if HEAVY_LAST:
        block = tl.num_programs(1) - 1 - block
    return (off_bh // num_heads).to(tl.int64), (off_bh % num_heads).to(tl.int64), block * BLOCK


@triton.jit
def key_bounds(
    rows, t_q, t_k, window, SeqStart, SeqEnd,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PACKED: tl.constexpr,
):  # fmt: skip
    """Query ``rows`` (a row or a vector of rows) see exactly the keys ``lo <= j <= hi``; ``hi < lo``: none.

    The kernels' copy of :func:`attnlab.backends.common.key_bounds`: query ``i`` sits at position
    ``p_i = i + t_k - t_q`` (bottom-right); causal keeps ``j <= p_i``, a window ``j > p_i - window``, packed
    sequences (``t_q == t_k``) the keys of the query's own sequence ``[SeqStart[i], SeqEnd[i])``. Rows past
    ``t_q`` (a ragged last block) read the last row's sequence.
    """
    pos = rows + (t_k - t_q)
    lo = tl.zeros_like(pos)
    hi = tl.zeros_like(pos) + (t_k - 1)
    if CAUSAL:
        hi = tl.minimum(hi, pos)
    if WINDOW:
        lo = tl.maximum(lo, pos - window + 1)
    if PACKED:
        row = tl.minimum(rows, t_q - 1)
        lo = tl.maximum(lo, tl.load(SeqStart + row))
        hi = tl.minimum(hi, tl.load(SeqEnd + row) - 1)
    return lo, hi


@triton.jit
def query_bounds(
    cols, t_q, t_k, window, SeqStart, SeqEnd,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, PACKED: tl.constexpr,
):  # fmt: skip
    """Key ``cols`` (a key or a vector of keys) are seen by exactly the queries ``lo <= i <= hi``.

    :func:`key_bounds` transposed: ``j <= p_i`` is ``i >= j - (t_k - t_q)``, ``j > p_i - window`` is
    ``i <= j - (t_k - t_q) + window - 1``, and a packed key is seen only by its own sequence's queries.
    """
    offset = t_k - t_q  # query i sits at position i + offset
    lo = tl.zeros_like(cols)
    hi = tl.zeros_like(cols) + (t_q - 1)
    if CAUSAL:
        lo = tl.maximum(lo, cols - offset)
    if WINDOW:
        hi = tl.minimum(hi, cols - offset + window - 1)
    if PACKED:
        col = tl.minimum(cols, t_k - 1)
        lo = tl.maximum(lo, tl.load(SeqStart + col))
        hi = tl.minimum(hi, tl.load(SeqEnd + col) - 1)
    return lo, hi


@triton.jit
def loop_phases(first_lo, last_lo, first_hi, last_hi, n, BLOCK: tl.constexpr, PADDING_IS_FREE: tl.constexpr):
    """Split a program's loop over tiles of ``BLOCK`` (along an axis of length ``n``) into its phases.

    The program's first row sees ``[first_lo, first_hi]`` along that axis and its last row ``[last_lo,
    last_hi]``; the bounds never decrease in between. Returns ``(start, unmasked_start, unmasked_end, end)``:

    - the loop runs from ``start`` (the first row's ``lo``, not rounded to ``BLOCK``) to ``end``;
    - ``masked`` tiles ``[start, unmasked_start)`` are cut by some row's lower bound;
    - ``unmasked`` tiles ``[unmasked_start, unmasked_end)`` lie inside every row's interval: no mask;
    - ``masked`` tiles ``[unmasked_end, end)`` are cut by some row's upper bound or the ragged end.

    ``PADDING_IS_FREE``: entries past ``n`` need no mask (the dk/dv pass's padded query rows read
    ``lse = +inf``, so their probabilities are already 0), so an upper bound of ``n - 1`` cuts nothing.
    """
    start = first_lo
    end = tl.maximum(last_hi + 1, start)
    unmasked_start = start + tl.cdiv(tl.maximum(last_lo - start, 0), BLOCK) * BLOCK
    unmasked_end = start + tl.maximum(first_hi + 1 - start, 0) // BLOCK * BLOCK
    if PADDING_IS_FREE:
        unmasked_end = tl.where(first_hi + 1 >= n, end, unmasked_end)
    unmasked_end = tl.maximum(unmasked_end, unmasked_start)  # no unmasked tile: all go to the last phase
    return start, unmasked_start, unmasked_end, end


@triton.jit
def tile_ptrs(head, start, BLOCK: tl.constexpr, stride_row, offs_d, stride_d, INT64_ROWS: tl.constexpr):
    """Pointers (BLOCK, BLOCK_D) to rows ``start ..`` of one head (``head``: the pointer to its row 0).

    Row offsets ``row * stride_row`` are int32 unless ``INT64_ROWS``: in a (b, t, h, d) buffer viewed as
    (b, h, t, d) the row stride is ``h * d``, and ``t * h * d`` can pass 2**31 elements. The launcher
    switches it on only for such tensors (int64 offsets cost registers in every tile of the hot loops).
    """
    rows = start + tl.arange(0, BLOCK)  # (BLOCK,)
    if INT64_ROWS:
        rows = rows.to(tl.int64)
    return (head + offs_d[None, :] * stride_d) + rows[:, None] * stride_row


@triton.jit
def load_tile(
    ptrs,
    offs_row,
    num_rows,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
):
    """Load a (rows, BLOCK_D) tile; rows >= num_rows and padded head-dim columns read as zero."""
    if CHECK_ROWS:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs, mask=offs_row[:, None] < num_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(offs_row[:, None] < num_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def store_tile(ptrs, tile, offs_row, num_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a (rows, BLOCK_D) tile, skipping rows >= num_rows and padded head-dim columns."""
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, tile, mask=offs_row[:, None] < num_rows)
    else:
        tl.store(ptrs, tile, mask=(offs_row[:, None] < num_rows) & (offs_d[None, :] < HEAD_DIM))
