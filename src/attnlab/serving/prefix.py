"""Prefix sharing: naming a full block of a prompt by its tokens and everything before them.

Two prompts that start with the same tokens produce the same keys and values for those tokens (a key at
position ``p`` depends only on tokens ``0..p``), so their caches can share the physical blocks that hold that
prefix. A block is named by a chained hash, ``hash((parent_hash, tokens of this block))``, where the parent is
the previous block's hash: equal hashes mean equal *prefixes*, not merely equal blocks. Only FULL blocks are
named; a partly filled last block is still being written and belongs to one sequence.

The hash is Python's own hash of a tuple of ints, which is the same in every process (only str and bytes
hashes are salted). :class:`attnlab.serving.blocks.BlockPool` also keeps each cached block's
``(parent_hash, tokens)`` and compares them on a hit, so two different prefixes can only be confused if their
parents' 64-bit hashes collide.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ROOT_HASH", "BlockKey", "block_hash", "full_block_keys"]

#: The parent hash of a sequence's first block.
ROOT_HASH = 0

#: What identifies a full block's content: ``(parent_hash, tokens of the block)``.
BlockKey = tuple[int, tuple[int, ...]]


def block_hash(key: BlockKey) -> int:
    """The chained hash of one full block from its :data:`BlockKey`."""
    return hash(key)


def full_block_keys(token_ids: Sequence[int], block_size: int) -> list[tuple[int, BlockKey]]:
    """``(hash, key)`` of each FULL block of ``token_ids``, in order; a partial last block is left out.

    ``full_block_keys([1, 2, 3, 4, 5], 2)`` names blocks ``(1, 2)`` and ``(3, 4)``; the second key holds the
    first block's hash, so ``(3, 4)`` after ``(1, 2)`` and ``(3, 4)`` after ``(9, 9)`` differ.
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    named: list[tuple[int, BlockKey]] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        key = (parent, tuple(int(token) for token in token_ids[start : start + block_size]))
        parent = block_hash(key)
        named.append((parent, key))
    return named
