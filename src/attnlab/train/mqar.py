"""Multi-query associative recall (MQAR), the Zoology benchmark's synthetic task for attention.

A sequence first lists ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; then ``num_queries`` keys come back,
at random places among filler tokens, each followed by its value. The keys are queried in rounds, each round a
new random order of all of them; with as many queries as pairs (Zoology's setting) every key is queried once.
The default fills every 2-token slot after the pairs with a query: many answers per sequence (more training
signal per token), and no shortcut: with one query per key, a model that has not learned to recall can still
answer by elimination (the last query's value is the one not yet asked for): 52% accuracy with 4 pairs.
A model must recall, after each queried key, the value it was paired with: what two attention layers can look
up (find the earlier copy of the key, read the token after it). The loss and the accuracy count only those answer
positions; every other target is ``IGNORE_INDEX`` (-100, what ``F.cross_entropy`` skips).

Tokens: 0 is the filler, keys are drawn from ``[1, vocab_size // 2)`` (distinct within a sequence) and values
from ``[vocab_size // 2, vocab_size)``. A batch depends only on ``(seed, step)``: :func:`mqar_batch` seeds its
own ``torch.Generator`` from them, so a resumed run or another rank draws the very same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FILLER", "IGNORE_INDEX", "MQARSpec", "batch_generator", "mqar_batch"]

IGNORE_INDEX = -100  # the target of every position that is not an answer (F.cross_entropy's ignore_index)
FILLER = 0  # the token between the query pairs


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step)`` alone: batch ``step`` is the same in every run and rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


@dataclass(frozen=True)
class MQARSpec:
    """The task's shape: ``seq_len`` input tokens over ``vocab_size`` ids, holding ``num_kv_pairs`` pairs and
    ``num_queries`` queries (None: as many as fit, ``(seq_len + 1) // 2 - num_kv_pairs``)."""

    vocab_size: int
    seq_len: int
    num_kv_pairs: int
    num_queries: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "num_kv_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MQAR {name} must be a positive integer, got {value!r}")
        if self.num_queries is None:
            object.__setattr__(self, "num_queries", max((self.seq_len + 1) // 2 - self.num_kv_pairs, 1))
        if isinstance(self.num_queries, bool) or not isinstance(self.num_queries, int) or self.num_queries < 1:
            raise ValueError(f"MQAR num_queries must be a positive integer, got {self.num_queries!r}")
        keys = self.vocab_size // 2 - 1  # ids 1 .. vocab_size // 2 - 1
        if self.num_kv_pairs > keys:
            raise ValueError(
                f"MQAR num_kv_pairs {self.num_kv_pairs} needs as many distinct keys, but vocab_size "
                f"{self.vocab_size} has only {keys} (keys are 1 .. vocab_size // 2 - 1): raise vocab_size to at "
                f"least {2 * (self.num_kv_pairs + 1)}"
            )
        needed = 2 * (self.num_kv_pairs + self.num_queries) - 1
        if self.seq_len < needed:
            raise ValueError(
                f"MQAR seq_len {self.seq_len} is too short for {self.num_kv_pairs} pairs and {self.num_queries} "
                f"queries: they need seq_len >= {needed}"
            )


def mqar_batch(spec: MQARSpec, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` MQAR sequences: inputs (b, seq_len) int64 and targets (b, seq_len) int64.

    The targets are the inputs shifted by one (next-token prediction) with every position masked to
    ``IGNORE_INDEX`` except those whose input is a queried key: there the target is that key's value.
    """
    n, q, b = spec.num_kv_pairs, spec.num_queries, batch_size
    half = spec.vocab_size // 2
    total = spec.seq_len + 1  # one more token than the inputs: the targets are shifted by one
    # distinct keys per row: the first n of a random permutation of 1 .. half - 1
    keys = torch.rand(b, half - 1, generator=generator).argsort(dim=-1)[:, :n] + 1  # (b, n)
    values = torch.randint(half, spec.vocab_size, (b, n), generator=generator)  # (b, n)
    tokens = torch.full((b, total), FILLER, dtype=torch.long)  # (b, total)
    tokens[:, 0 : 2 * n : 2] = keys
    tokens[:, 1 : 2 * n : 2] = values
    # the queries: rounds of every key in a new random order, each query in its own 2-token slot after the pairs
    rounds = -(-q // n)
    order = torch.rand(b, rounds, n, generator=generator).argsort(dim=-1).flatten(1)[:, :q]  # (b, q): pair indices
    slots = (total - 2 * n) // 2
    chosen = torch.rand(b, slots, generator=generator).argsort(dim=-1)[:, :q].sort(dim=-1).values  # (b, q)
    query_pos = 2 * n + 2 * chosen  # (b, q): where each query key sits
    tokens.scatter_(1, query_pos, keys.gather(1, order))
    tokens.scatter_(1, query_pos + 1, values.gather(1, order))
    inputs = tokens[:, :-1]  # (b, seq_len)
    targets = torch.full_like(inputs, IGNORE_INDEX)  # (b, seq_len)
    targets.scatter_(1, query_pos, values.gather(1, order))  # the answer follows each query key
    return inputs.contiguous(), targets
