"""MQAR batches: the answers are the right values, only answer positions count, a batch depends on (seed, step)."""

from __future__ import annotations

import pytest
import torch

from attnlab.train.mqar import FILLER, IGNORE_INDEX, MQARSpec, batch_generator, mqar_batch

SPEC = MQARSpec(vocab_size=32, seq_len=40, num_kv_pairs=6, num_queries=6)  # Zoology: every key once


def test_targets_are_the_values_of_the_queried_keys():
    inputs, targets = mqar_batch(SPEC, 16, batch_generator(3, 7))
    n, half = SPEC.num_kv_pairs, SPEC.vocab_size // 2
    assert inputs.shape == targets.shape == (16, SPEC.seq_len)
    assert inputs.dtype == targets.dtype == torch.long
    for row_in, row_t in zip(inputs, targets, strict=True):
        keys, values = row_in[0 : 2 * n : 2], row_in[1 : 2 * n : 2]
        assert len(set(keys.tolist())) == n, "keys within a sequence are distinct"
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < SPEC.vocab_size)).all()
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        answers = (row_t != IGNORE_INDEX).nonzero().flatten()
        assert len(answers) == n, "every key is queried exactly once"
        assert (answers >= 2 * n).all(), "no answer inside the key-value section"
        for position in answers.tolist():
            key = row_in[position].item()
            assert row_t[position].item() == pairs[key], "the target after a query key is that key's value"
            if position + 1 < SPEC.seq_len:  # the value follows the query in the sequence too
                assert row_in[position + 1].item() == pairs[key]
        queried = {row_in[p].item() for p in answers.tolist()}
        assert queried == set(pairs)
        rest = torch.ones(SPEC.seq_len, dtype=torch.bool)
        rest[: 2 * n] = False
        rest[answers] = False
        rest[(answers + 1).clamp(max=SPEC.seq_len - 1)] = False
        assert (row_in[rest] == FILLER).all(), "everything else is filler"


def test_batch_depends_only_on_seed_and_step():
    a = mqar_batch(SPEC, 4, batch_generator(1, 5))
    b = mqar_batch(SPEC, 4, batch_generator(1, 5))
    c = mqar_batch(SPEC, 4, batch_generator(1, 6))
    d = mqar_batch(SPEC, 4, batch_generator(2, 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


def test_the_shortest_sequence_fits_every_query():
    spec = MQARSpec(vocab_size=16, seq_len=4 * 3 - 1, num_kv_pairs=3, num_queries=3)
    _, targets = mqar_batch(spec, 8, batch_generator(0, 0))
    assert ((targets != IGNORE_INDEX).sum(dim=1) == 3).all()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(vocab_size=8, seq_len=64, num_kv_pairs=4), "raise vocab_size to at least 10"),
        (dict(vocab_size=64, seq_len=10, num_kv_pairs=4, num_queries=4), "seq_len >= 15"),
        (dict(vocab_size=64, seq_len=8, num_kv_pairs=4), "seq_len >= 9"),  # not even one query fits
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4, num_queries=0), "num_queries must be a positive integer"),
        (dict(vocab_size=64, seq_len=0, num_kv_pairs=4), "seq_len must be a positive integer"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=True), "num_kv_pairs must be a positive integer"),
    ],
)
def test_bad_shapes_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        MQARSpec(**fields)


def test_more_queries_than_pairs_query_every_key_in_rounds():
    spec = MQARSpec(vocab_size=32, seq_len=31, num_kv_pairs=4, num_queries=12)  # 2 * (4 + 12) - 1 = 31: full
    inputs, targets = mqar_batch(spec, 8, batch_generator(0, 1))
    for row_in, row_t in zip(inputs, targets, strict=True):
        pairs = dict(zip(row_in[0:8:2].tolist(), row_in[1:8:2].tolist(), strict=True))
        answers = (row_t != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(answers) == 12
        queried = [row_in[p].item() for p in answers]
        for start in range(0, 12, 4):  # each round of 4 queries asks every key once
            assert sorted(queried[start : start + 4]) == sorted(pairs)
        assert all(row_t[p].item() == pairs[row_in[p].item()] for p in answers)


def test_by_default_queries_fill_every_slot():
    spec = MQARSpec(vocab_size=64, seq_len=64, num_kv_pairs=4)
    assert spec.num_queries == 28  # (64 + 1) // 2 - 4: every 2-token slot after the pairs
    inputs, targets = mqar_batch(spec, 4, batch_generator(0, 0))
    assert ((targets != IGNORE_INDEX).sum(dim=1) == 28).all()
    assert (inputs[:, 8:] != FILLER).all(), "no filler left"
