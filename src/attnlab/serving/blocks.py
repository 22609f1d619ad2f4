"""The block pool of a paged KV cache: which physical blocks are free, and who holds the others.

vLLM's idea (PagedAttention): the keys and values of every sequence live in fixed-size *blocks* of
``block_size`` token slots, taken from one shared pool, instead of one contiguous buffer per sequence sized
for the longest possible answer. A sequence's *block table* lists its blocks in order, so memory is wasted
only in each sequence's last, partly filled block, and sequences of any length share one preallocated pool.

Blocks are **reference counted**, which lets sequences share them:

- **prefix sharing**: a full block holding a prompt prefix another sequence already computed is reused
  (:meth:`BlockPool.lookup` / :meth:`BlockPool.register`, named by :mod:`attnlab.serving.prefix`);
- **forking** (parallel sampling, beam search): a child sequence starts with every block of its parent
  (:meth:`BlockPool.share`);
- **copy-on-write**: before a sequence writes into a block others hold too, it takes a private copy
  (:meth:`BlockPool.ensure_writable` returns a fresh block; the caller copies the data).

A block whose count falls to zero returns to the free list. If it holds a registered prefix it stays
*cached*: a later :meth:`lookup` of that prefix revives it, until :meth:`allocate` needs the room and
evicts it (oldest freed first). Cached blocks count as free: they cost nothing to reclaim.
"""

from __future__ import annotations

from collections import OrderedDict

from .prefix import BlockKey, block_hash

__all__ = ["BlockPool"]


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class BlockPool:
    """``num_blocks`` physical blocks of ``block_size`` token slots each, with reference counts.

    Block ids are ints in ``[0, num_blocks)``. The pool holds no tensors: it decides *which* block, the
    cache (:class:`attnlab.serving.paged_cache.PagedKVCache`) holds the data.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = _positive_int("num_blocks", num_blocks)
        self.block_size = _positive_int("block_size", block_size)
        self._refcounts = [0] * num_blocks
        # Free blocks, oldest freed first (the eviction order of cached ones); values unused.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}  # prefix hash -> block holding that prefix
        self._key_of: dict[int, BlockKey] = {}  # block -> its (parent_hash, tokens), for cached blocks

    # -- counts ---------------------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks :meth:`allocate` can hand out now (free ones, cached prefixes included)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks registered under a prefix hash (in use or free)."""
        return len(self._cached)

    def can_allocate(self, num_blocks: int) -> bool:
        """Whether ``num_blocks`` more blocks can be allocated now."""
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
        return num_blocks <= len(self._free)

    def refcount(self, block: int) -> int:
        """How many holders ``block`` has (0: free)."""
        self._check_block(block)
        return self._refcounts[block]

    # -- allocation -----------------------------------------------------------------------------------------

    def allocate(self) -> int:
        """A free block with a count of 1; evicts the oldest cached prefix if it takes a cached block.

        Raises ``ValueError`` when every block is in use (ask :meth:`can_allocate` first to wait instead).
        """
        if not self._free:
            raise ValueError(f"the block pool is exhausted: all {self.num_blocks} blocks are in use")
        block, _ = self._free.popitem(last=False)
        self._forget(block)
        self._refcounts[block] = 1
        return block

    def share(self, block: int) -> int:
        """One more holder of an allocated ``block`` (a fork, or a prefix hit); returns ``block``."""
        self._check_held(block)
        self._refcounts[block] += 1
        return block

    def free(self, block: int) -> bool:
        """Drop one holder of ``block``; True when that was the last one and it went back to the free list."""
        self._check_held(block)
        self._refcounts[block] -= 1
        if self._refcounts[block] == 0:
            self._free[block] = None  # newest at the end: evicted last
            return True
        return False

    def ensure_writable(self, block: int) -> int:
        """Copy-on-write: ``block`` itself if its caller is its only holder, else a fresh block.

        With a fresh block the caller's hold on ``block`` is dropped and the caller must copy the data
        (``new != block`` tells it to). A cached prefix block that is written to is unregistered: its
        content is about to change.
        """
        self._check_held(block)
        if self._refcounts[block] == 1:
            self._forget(block)
            return block
        if not self._free:
            raise ValueError(
                f"the block pool is exhausted: copy-on-write of block {block} needs a free block, all "
                f"{self.num_blocks} are in use"
            )
        fresh = self.allocate()
        self.free(block)
        return fresh

    # -- prefix cache ---------------------------------------------------------------------------------------

    def lookup(self, key: BlockKey) -> int | None:
        """The block holding the prefix ``key`` with one more holder (revived if it was free), or None."""
        block = self._cached.get(block_hash(key))
        if block is None or self._key_of[block] != key:  # (the key check rules out hash collisions)
            return None
        if self._refcounts[block] == 0:
            del self._free[block]
        self._refcounts[block] += 1
        return block

    def register(self, block: int, key: BlockKey) -> None:
        """Record that the allocated, full ``block`` holds the prefix ``key`` (a no-op if one already does)."""
        self._check_held(block)
        digest = block_hash(key)
        if digest in self._cached or block in self._key_of:
            return
        self._cached[digest] = block
        self._key_of[block] = key

    # -- helpers --------------------------------------------------------------------------------------------

    def _forget(self, block: int) -> None:
        key = self._key_of.pop(block, None)
        if key is not None:
            del self._cached[block_hash(key)]

    def _check_block(self, block: object) -> None:
        if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be an int in [0, {self.num_blocks}), got {block!r}")

    def _check_held(self, block: object) -> None:
        self._check_block(block)
        if self._refcounts[block] == 0:
            raise ValueError(f"block {block} is free (not allocated)")
