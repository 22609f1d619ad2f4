"""Which tokens each rank holds: the sequence layout of context parallelism.

A sequence of ``tokens`` tokens is cut into equal chunks. Without load balancing there are ``N`` chunks
(``N`` = world size) and rank ``r`` holds chunk ``r``. Causal attention makes that unfair: the last rank's
queries see the whole sequence, the first rank's only its own chunk. With load balancing (head-tail, as in
Llama 3 and Megatron) there are ``2N`` chunks and rank ``r`` holds chunks ``r`` and ``2N - 1 - r``, one early
and one late, so every rank does the same amount of causal work. A rank's local shard is its chunks
concatenated in that order along the token axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Piece", "SequenceLayout"]


@dataclass(frozen=True)
class Piece:
    """One contiguous chunk of the sequence as a rank holds it."""

    start: int  # global position of its first token
    length: int  # tokens in it
    offset: int  # where it starts inside the rank's local shard


@dataclass(frozen=True)
class SequenceLayout:
    """How ``tokens`` tokens are split over ``world_size`` ranks (validated when built)."""

    tokens: int
    world_size: int
    load_balance: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {self.world_size!r}")
        if not isinstance(self.load_balance, bool):
            raise ValueError(f"load_balance must be True or False, got {self.load_balance!r}")
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"the sequence must hold at least one token, got {self.tokens!r}")
        if self.tokens % self.num_chunks != 0:
            how = "2 * world_size (load_balance=True: two chunks per rank)" if self.load_balance else "world_size"
            raise ValueError(
                f"{self.tokens} tokens cannot be split over {self.world_size} ranks: the sequence is cut into "
                f"{how} = {self.num_chunks} equal chunks, so its length must be a multiple of {self.num_chunks}"
            )

    @classmethod
    def from_local(cls, local_tokens: int, world_size: int, load_balance: bool = True) -> SequenceLayout:
        """The layout whose every rank holds ``local_tokens`` tokens (the shards of one global sequence)."""
        return cls(local_tokens * world_size, world_size, load_balance)

    @property
    def num_chunks(self) -> int:
        """``2N`` chunks with load balancing, ``N`` without."""
        return 2 * self.world_size if self.load_balance else self.world_size

    @property
    def chunk_len(self) -> int:
        return self.tokens // self.num_chunks

    @property
    def local_tokens(self) -> int:
        return self.tokens // self.world_size

    def chunks_of(self, rank: int) -> tuple[int, ...]:
        """The chunk indices rank ``rank`` holds, in local order: ``(r, 2N - 1 - r)`` or ``(r,)``."""
        if self.load_balance:
            return (rank, self.num_chunks - 1 - rank)
        return (rank,)

    def pieces(self, rank: int) -> tuple[Piece, ...]:
        """The chunks of rank ``rank`` with their global start and their offset in the local shard."""
        size = self.chunk_len
        return tuple(Piece(chunk * size, size, i * size) for i, chunk in enumerate(self.chunks_of(rank)))

    def rank_major_positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(tokens,) int64: the global position of each token once the shards are concatenated in rank order.

        ``full.index_select(dim, positions)`` turns a full sequence into the concatenated shards, and
        ``gathered.index_select(dim, positions.argsort())`` turns concatenated shards back into the sequence.
        """
        starts = [piece.start for rank in range(self.world_size) for piece in self.pieces(rank)]
        return torch.cat([torch.arange(s, s + self.chunk_len, device=device) for s in starts])  # (tokens,)
