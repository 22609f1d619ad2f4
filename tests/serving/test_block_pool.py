"""BlockPool: free list, reference counts, sharing, copy-on-write and the prefix cache of freed blocks."""

from __future__ import annotations

import re

import pytest

from attnlab.serving import BlockPool, full_block_keys
from attnlab.serving.prefix import ROOT_HASH, block_hash


def test_allocate_and_free_account_for_every_block():
    pool = BlockPool(4, 16)
    blocks = [pool.allocate() for _ in range(4)]
    assert sorted(blocks) == [0, 1, 2, 3] and pool.num_free == 0 and not pool.can_allocate(1)
    with pytest.raises(ValueError, match=re.escape("the block pool is exhausted: all 4 blocks are in use")):
        pool.allocate()
    assert all(pool.free(block) for block in blocks)
    assert pool.num_free == 4 and pool.can_allocate(4) and not pool.can_allocate(5)


def test_shared_blocks_return_with_their_last_holder():
    pool = BlockPool(2, 4)
    block = pool.allocate()
    assert pool.share(block) == block and pool.refcount(block) == 2
    assert not pool.free(block) and pool.num_free == 1
    assert pool.free(block) and pool.num_free == 2 and pool.refcount(block) == 0


def test_copy_on_write_gives_a_fresh_block_only_when_shared():
    pool = BlockPool(3, 4)
    block = pool.allocate()
    assert pool.ensure_writable(block) == block  # sole holder: write in place
    pool.share(block)
    fresh = pool.ensure_writable(block)
    assert fresh != block and pool.refcount(block) == 1 and pool.refcount(fresh) == 1


def test_copy_on_write_without_room_is_refused():
    pool = BlockPool(1, 4)
    block = pool.share(pool.allocate())
    with pytest.raises(ValueError, match="copy-on-write of block 0 needs a free block, all 1 are in use"):
        pool.ensure_writable(block)
    assert pool.refcount(block) == 2  # nothing changed


def test_prefix_blocks_are_found_revived_and_evicted_last():
    pool = BlockPool(3, 2)
    (_, key_a), (_, key_b) = full_block_keys([1, 2, 3, 4], 2)
    a, b = pool.allocate(), pool.allocate()
    pool.register(a, key_a)
    pool.register(b, key_b)
    assert pool.lookup(key_a) == a and pool.refcount(a) == 2
    for block in (a, a, b):
        pool.free(block)
    assert pool.num_free == 3 and pool.num_cached == 2  # freed, still cached
    assert pool.lookup(key_b) == b and pool.num_free == 2  # revived from the free list
    pool.free(b)
    first, second = pool.allocate(), pool.allocate()  # the never-cached block first, then the oldest freed: a
    assert (first, second) == (2, a) and pool.lookup(key_a) is None  # a's prefix was evicted
    assert pool.lookup(key_b) == b


def test_a_colliding_hash_with_other_tokens_is_no_hit():
    pool = BlockPool(2, 2)
    block = pool.allocate()
    pool.register(block, (ROOT_HASH, (1, 2)))
    pool._cached[block_hash((ROOT_HASH, (7, 7)))] = block  # forge a collision
    assert pool.lookup((ROOT_HASH, (7, 7))) is None


def test_keys_chain_on_the_prefix():
    keys = full_block_keys([1, 2, 3, 4, 5], 2)
    assert [key for _, key in keys] == [(ROOT_HASH, (1, 2)), (keys[0][0], (3, 4))]
    other = full_block_keys([9, 9, 3, 4], 2)
    assert other[1][1][1] == keys[1][1][1] and other[1][0] != keys[1][0]  # same tokens, other prefix


@pytest.mark.parametrize("bad", [-1, 4, "0", True, 1.0])
def test_bad_block_ids_are_refused(bad):
    pool = BlockPool(4, 2)
    with pytest.raises(ValueError, match=re.escape(f"block must be an int in [0, 4), got {bad!r}")):
        pool.free(bad)


def test_freeing_a_free_block_is_refused():
    pool = BlockPool(4, 2)
    with pytest.raises(ValueError, match="block 1 is free"):
        pool.free(1)


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0), (True, 4), (4, 2.0)])
def test_bad_sizes_are_refused(num_blocks, block_size):
    with pytest.raises(ValueError, match="must be a positive int"):
        BlockPool(num_blocks, block_size)
