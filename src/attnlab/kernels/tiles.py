"""Pieces shared by the FlashAttention kernels: which block a program owns, which keys a query block
sees, and tile loads and stores of ``(rows, head_dim)`` blocks, masked only where a bound can be crossed.

``CHECK_ROWS`` and the head-dim padding (``BLOCK_D > HEAD_DIM`` when the head dim is not a power of two)
are compile-time flags, so interior tiles compile to plain unmasked loads.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["key_range", "load_tile", "program_block", "store_tile"]


@triton.jit
def program_block(num_heads, BLOCK: tl.constexpr, HEAVY_LAST: tl.constexpr):
    """This program's (batch, head, first row of its block); the grid is (b * h, blocks).

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
def key_range(start_m, t_q, t_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys seen by query rows [start_m, start_m + BLOCK_M): ``(k_full, k_end)``.

    Keys below ``k_full`` (whole blocks) are visible to every row and need no mask; keys in
    ``[k_full, k_end)`` cross the causal diagonal or the ragged end and are masked; the causal future
    beyond ``k_end`` is never visited. Bottom-right alignment: query i sees keys j <= i + t_k - t_q.
    """
    if CAUSAL:
        offset = t_k - t_q
        k_end = tl.maximum(tl.minimum(t_k, start_m + BLOCK_M + offset), 0)  # keys seen by the last row
        k_full = tl.maximum(tl.minimum(k_end, start_m + offset + 1), 0)  # keys seen by the first row
    else:
        k_end = t_k
        k_full = t_k
    return (k_full // BLOCK_N) * BLOCK_N, k_end


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
