"""PagedKVCache: sequences, slots, prefix sharing, forks with copy-on-write, and attention through it."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.reference import reference_core_attention
from attnlab.serving import PagedKVCache


def _cache(num_blocks: int = 8, block_size: int = 4, num_layers: int = 2) -> PagedKVCache:
    return PagedKVCache(num_layers, num_blocks, block_size, h_kv=2, head_dim=3)


def _fill(cache: PagedKVCache, seq_id, n: int, seed: int = 0) -> torch.Tensor:
    """Append n slots to seq_id and write random keys/values (values = keys + 1) into every layer."""
    slots = cache.append_slots([seq_id], n)
    keys = torch.randn(n, cache.h_kv, cache.head_dim, generator=torch.Generator().manual_seed(seed))
    for layer in range(cache.num_layers):
        cache.write(layer, slots, keys + layer, keys + layer + 1)
    return keys


def test_slots_tables_and_lengths():
    cache = _cache()
    assert cache.add_sequence("a", list(range(6))) == 0
    assert cache.add_sequence("b", [5]) == 0
    slots = cache.append_slots(["a", "b"], [6, 1])
    a, b = cache.block_ids("a"), cache.block_ids("b")
    assert len(a) == 2 and len(b) == 1
    expected = [a[0] * 4 + i for i in range(4)] + [a[1] * 4, a[1] * 4 + 1, b[0] * 4]
    assert slots.tolist() == expected and slots.dtype == torch.int64
    assert cache.kv_lens(["a", "b"]).tolist() == [6, 1] and cache.kv_lens(["a"]).dtype == torch.int32
    table = cache.block_table_tensor(["b", "a"])
    assert table.dtype == torch.int32 and table.tolist() == [[b[0], 0], a]
    assert cache.block_table_tensor(["a"], width=5).shape == (1, 5)


def test_written_data_reads_back_in_order():
    cache = _cache()
    cache.add_sequence(0, [1, 2, 3])
    first = _fill(cache, 0, 3, seed=1)
    second = _fill(cache, 0, 4, seed=2)  # crosses into a second block
    keys, values = cache.gather(1, [0])
    expected = torch.cat([first, second]) + 1  # layer 1 holds keys + 1
    assert torch.equal(keys[0].transpose(0, 1), expected) and torch.equal(values, keys + 1)


def test_every_block_returns_at_the_end():
    cache = _cache()
    for seq_id, n in ((0, 5), (1, 9), (2, 1)):
        cache.add_sequence(seq_id, [7] * n)
        cache.append_slots([seq_id], n)
    cache.fork(1, 3)
    cache.append_slots([3, 1], 2)
    assert cache.pool.num_free < 8
    for seq_id in (0, 1, 2, 3):
        cache.free_sequence(seq_id)
    assert cache.pool.num_free == 8 and all(cache.pool.refcount(block) == 0 for block in range(8))


def test_identical_prompt_prefixes_share_blocks():
    cache = _cache()
    prompt = list(range(10))  # blocks [0..3], [4..7] full, [8, 9] partial
    cache.add_sequence("a", prompt)
    _fill(cache, "a", 10)
    assert cache.add_sequence("early", prompt) == 0  # a's blocks are not written yet as far as the cache knows
    cache.mark_written(["a"])
    assert cache.add_sequence("b", prompt) == 8 and cache.shared_blocks == 2
    assert cache.block_ids("b") == cache.block_ids("a")[:2]
    assert cache.add_sequence("c", prompt[:5] + [99] * 5) == 4 and cache.shared_blocks == 3  # first block only
    assert cache.add_sequence("d", [99, *prompt[1:]]) == 0  # differs in the first token: nothing shared
    assert cache.add_sequence("e", prompt[:8]) == 4  # the last prompt token is always computed
    cache.append_slots(["b"], 2)  # b computes its last two prompt tokens in a block of its own
    assert cache.block_ids("b")[2] not in cache.block_ids("a") and cache.copied_blocks == 0


def test_a_freed_prefix_is_reused_until_its_blocks_are_needed():
    cache = _cache(num_blocks=3)
    cache.add_sequence("a", list(range(9)))
    _fill(cache, "a", 9)
    cache.mark_written(["a"])
    cache.free_sequence("a")
    assert cache.pool.num_free == 3  # cached blocks count as free
    assert cache.add_sequence("b", list(range(9))) == 8
    cache.free_sequence("b")
    cache.add_sequence("c", [5] * 12)
    cache.append_slots(["c"], 12)  # takes every block: the cached prefix is evicted
    assert cache.add_sequence("d", list(range(9))) == 0


def test_fork_copies_on_write_at_the_first_differing_block():
    cache = _cache()
    cache.add_sequence("parent", list(range(6)))
    _fill(cache, "parent", 6, seed=3)
    cache.fork("parent", "child")
    assert cache.block_ids("child") == cache.block_ids("parent")
    shared_partial = cache.block_ids("parent")[1]
    slots = cache.append_slots(["child"], 1)
    child = cache.block_ids("child")
    assert child[0] == cache.block_ids("parent")[0]  # the full first block stays shared
    assert child[1] != shared_partial and cache.copied_blocks == 1  # the partial one was copied
    assert slots.tolist() == [child[1] * 4 + 2]
    before = [pages[shared_partial].clone() for pages in cache.key_pages]
    for layer in range(cache.num_layers):
        cache.write(layer, slots, torch.full((1, 2, 3), 9.0), torch.full((1, 2, 3), 9.0))
    for layer, pages in enumerate(cache.key_pages):
        assert torch.equal(pages[shared_partial], before[layer])  # the parent's data is untouched
        assert torch.equal(pages[child[1], :, :2], pages[shared_partial, :, :2])  # the copy kept its prefix
    cache.append_slots(["parent"], 1)  # now the parent's block is its own again: no second copy
    assert cache.copied_blocks == 1 and cache.block_ids("parent")[1] == shared_partial


def test_pool_exhaustion_is_reported_before_it_happens():
    cache = _cache(num_blocks=3)
    assert cache.can_allocate(12) and not cache.can_allocate(13)
    cache.add_sequence("a", [1] * 8)
    cache.append_slots(["a"], 8)
    cache.add_sequence("b", [2] * 5)
    assert cache.blocks_needed(["b"], 5) == 2 and not cache.can_append(["b"], 5)
    with pytest.raises(ValueError, match=re.escape("these sequences need 2 more blocks, 1 are free")):
        cache.append_slots(["a", "b"], [0, 5])
    assert cache.length("b") == 0 and cache.pool.num_free == 1  # all or nothing
    cache.fork("a", "c")
    assert cache.can_append(["c"], 1) and cache.blocks_needed(["c"], 1) == 1  # a new block, no copy


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.append_slots(["nope"], 1), "unknown sequence id 'nope'"),
        (lambda c: c.free_sequence(5), "unknown sequence id 5"),
        (lambda c: c.kv_lens([[1]]), "unknown sequence id [1]"),
        (lambda c: c.add_sequence("a", [1]), "sequence 'a' already exists"),
        (lambda c: c.add_sequence("z", []), "prompt_token_ids must be a non-empty sequence of ints"),
        (lambda c: c.add_sequence("z", [1.5]), "prompt_token_ids must be a non-empty sequence of ints"),
        (lambda c: c.fork("a", "a"), "sequence 'a' already exists"),
        (lambda c: c.append_slots(["a", "a"], 1), "seq_ids must be distinct"),
        (lambda c: c.append_slots(["a"], -1), "num_new must be an int >= 0 or one such int per sequence (1)"),
        (lambda c: c.append_slots(["a"], [1, 2]), "num_new must be an int >= 0"),
        (lambda c: c.block_table_tensor(["a"], width=0), "width must be an int >= 1"),
        (lambda c: c.can_allocate(-1), "num_tokens must be an int >= 0"),
        (lambda c: c.write(2, torch.zeros(1, dtype=torch.int64), *[torch.zeros(1, 2, 3)] * 2), "layer must be"),
        (lambda c: c.write(0, torch.zeros(1), *[torch.zeros(1, 2, 3)] * 2), "slot_mapping must be a 1-D int32"),
        (lambda c: c.write(0, torch.zeros(1, dtype=torch.int64), *[torch.zeros(1, 3, 2)] * 2), "keys must have"),
        (lambda c: c.write(0, torch.tensor([32]), *[torch.zeros(1, 2, 3)] * 2), "slots in [32, 32], outside [0, 32)"),
        (
            lambda c: c.write(0, torch.tensor([0]), *[torch.zeros(1, 2, 3, dtype=torch.float64)] * 2),
            "keys must be torch.float32 on cpu",
        ),
    ],
)
def test_bad_calls_raise_value_errors(call, message):
    cache = _cache()
    cache.add_sequence("a", [1])
    cache.append_slots(["a"], 1)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(cache)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_layers": 0}, {"h_kv": 0}, {"head_dim": -1}, {"num_blocks": 0}, {"block_size": 0}, {"dtype": torch.int32}],
)
def test_bad_sizes_are_refused(kwargs):
    args = {"num_layers": 1, "num_blocks": 2, "block_size": 2, "h_kv": 1, "head_dim": 4} | kwargs
    with pytest.raises(ValueError, match="must be"):
        PagedKVCache(**args)


def test_decoding_through_the_cache_matches_the_reference():
    # A shared-prefix prompt pair plus a fork, decoded for a few steps through paged attention, against the
    # float64 reference on each sequence's gathered keys. FlashAttention's rule would need naive on the same
    # data; here a plain bound suffices: 64 float32 ulps of the output's magnitude (float32 rounding of a
    # softmax over <= 20 keys is a few ulps; a wrong page or length errs by the whole magnitude).
    h, h_kv, head_dim = 4, 2, 8
    cache = PagedKVCache(1, 16, 4, h_kv, head_dim)
    gen = torch.Generator().manual_seed(0)
    prompts = {"a": list(range(9)), "b": list(range(9))}
    for seq_id, prompt in prompts.items():
        start = cache.add_sequence(seq_id, prompt)
        n = len(prompt) - start
        slots = cache.append_slots([seq_id], n)
        keys = torch.arange(start, len(prompt)).float().view(n, 1, 1).expand(n, h_kv, head_dim) / 10  # by position
        cache.write(0, slots, keys.contiguous(), (keys * 2).contiguous())
        cache.mark_written([seq_id])
    assert cache.shared_blocks == 2
    cache.fork("a", "c")
    ids = ["a", "b", "c"]
    for _ in range(3):
        slots = cache.append_slots(ids, 1)
        new = torch.randn(len(ids), h_kv, head_dim, generator=gen)
        cache.write(0, slots, new, new + 1)
        q = torch.randn(len(ids), h, 1, head_dim, generator=gen)
        with torch.no_grad():
            got = BACKENDS["flash_decode_torch"].attend_paged(
                q, cache.key_pages[0], cache.value_pages[0], cache.block_table_tensor(ids), cache.kv_lens(ids),
                AttentionSpec(),
            )  # fmt: skip
        keys, values = cache.gather(0, ids)
        for row, length in enumerate(cache.kv_lens(ids).tolist()):
            k, v = keys[row : row + 1, :, :length], values[row : row + 1, :, :length]
            want, _ = reference_core_attention(q[row : row + 1].double(), k.double(), v.double())
            assert (got[row] - want[0]).abs().max() <= 64 * torch.finfo(torch.float32).eps * want.abs().max()
    assert cache.copied_blocks == 1  # c's first append copied the shared partial block


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_workloads_keep_the_books_and_the_data(data):
    # Random adds (prompts from a tiny vocabulary, so prefixes repeat), appends, forks and frees against a
    # shadow copy of every sequence's keys: the cache must read back exactly what each sequence wrote, every
    # block's count must equal the tables holding it, and all blocks must be free at the end.
    cache = PagedKVCache(1, 12, 2, h_kv=1, head_dim=1)
    shadow: dict[int, list[float]] = {}  # seq id -> its keys, one float per token
    next_id, next_value = 0, 2.0
    for _ in range(data.draw(st.integers(1, 25))):
        action = data.draw(st.sampled_from(["add", "append", "fork", "free"]))
        if action == "add" or not shadow:
            prompt = data.draw(st.lists(st.integers(0, 1), min_size=1, max_size=7))
            if not cache.can_allocate(len(prompt)):
                continue
            cached = cache.add_sequence(next_id, prompt)
            # A shared prefix is the data an earlier sequence wrote for the same tokens: token t's key is t's id.
            shadow[next_id] = [float(token) for token in prompt[:cached]]
            rest = prompt[cached:]
            slots = cache.append_slots([next_id], len(rest))
            cache.write(0, slots, *[torch.tensor(rest, dtype=torch.float32).view(-1, 1, 1)] * 2)
            cache.mark_written([next_id])
            shadow[next_id] += [float(token) for token in rest]
            next_id += 1
        elif action == "append":
            seq_id = data.draw(st.sampled_from(sorted(shadow)))
            n = data.draw(st.integers(1, 3))
            if not cache.can_append([seq_id], n):
                with pytest.raises(ValueError, match="the block pool is exhausted"):
                    cache.append_slots([seq_id], n)
                continue
            values = [next_value + i for i in range(n)]  # generated tokens: values no prompt token has
            next_value += n
            cache.write(0, cache.append_slots([seq_id], n), *[torch.tensor(values).view(-1, 1, 1)] * 2)
            shadow[seq_id] += values
        elif action == "fork":
            parent = data.draw(st.sampled_from(sorted(shadow)))
            cache.fork(parent, next_id)
            shadow[next_id] = list(shadow[parent])
            next_id += 1
        else:
            seq_id = data.draw(st.sampled_from(sorted(shadow)))
            cache.free_sequence(seq_id)
            del shadow[seq_id]
        holders = [0] * 12
        for seq_id, keys in shadow.items():
            assert cache.length(seq_id) == len(keys)
            for block in cache.block_ids(seq_id):
                holders[block] += 1
            gathered, _ = cache.gather(0, [seq_id])
            assert gathered.flatten().tolist() == keys
        assert holders == [cache.pool.refcount(block) for block in range(12)]
        assert cache.pool.num_free == holders.count(0)
    for seq_id in list(shadow):
        cache.free_sequence(seq_id)
    assert cache.pool.num_free == 12
