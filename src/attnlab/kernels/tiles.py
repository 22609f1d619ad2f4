"""Tile loads and stores of ``(rows, head_dim)`` blocks, masked only where a bound can be crossed.

``CHECK_ROWS`` and the head-dim padding (``BLOCK_D > HEAD_DIM`` when the head dim is not a power of two)
are compile-time flags, so interior tiles compile to plain unmasked loads.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["load_tile", "store_tile"]


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
