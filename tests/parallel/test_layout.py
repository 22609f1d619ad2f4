"""The head-tail layout: which chunks each rank holds, and the orders that gather and scatter them."""

from __future__ import annotations

import pytest
import torch

from attnlab.parallel.layout import Piece, SequenceLayout


def test_load_balanced_ranks_hold_a_head_and_a_tail_chunk():
    layout = SequenceLayout(tokens=16, world_size=4, load_balance=True)
    assert layout.chunk_len == 2 and layout.local_tokens == 4
    assert layout.chunks_of(0) == (0, 7) and layout.chunks_of(3) == (3, 4)
    assert layout.pieces(1) == (Piece(start=2, length=2, offset=0), Piece(start=12, length=2, offset=2))


def test_without_load_balancing_rank_r_holds_chunk_r():
    layout = SequenceLayout(tokens=12, world_size=3, load_balance=False)
    assert [layout.pieces(r) for r in range(3)] == [(Piece(4 * r, 4, 0),) for r in range(3)]


@pytest.mark.parametrize("load_balance", [True, False])
def test_rank_major_positions_and_their_inverse(load_balance):
    layout = SequenceLayout(tokens=12, world_size=3, load_balance=load_balance)
    positions = layout.rank_major_positions()  # (12,)
    full = torch.arange(100, 112)  # (12,)
    shards = full.index_select(0, positions)
    for rank in range(3):  # the concatenated shards, rank after rank
        local = torch.cat([full[p.start : p.start + p.length] for p in layout.pieces(rank)])
        assert torch.equal(shards[4 * rank : 4 * rank + 4], local)
    assert torch.equal(shards.index_select(0, positions.argsort()), full)


def test_a_sequence_that_does_not_split_is_refused_by_its_chunk_count():
    with pytest.raises(ValueError, match="multiple of 8"):
        SequenceLayout(tokens=12, world_size=4, load_balance=True)
    with pytest.raises(ValueError, match="multiple of 6"):
        SequenceLayout.from_local(3, world_size=3, load_balance=True)
    assert SequenceLayout.from_local(3, world_size=3, load_balance=False).tokens == 9
