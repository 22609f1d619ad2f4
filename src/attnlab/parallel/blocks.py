"""Attention of one query chunk over one key chunk at their global positions, with any backend.

A backend knows one causal relation only: bottom-right alignment (the ``t_q`` queries are the last ``t_q``
positions of the ``t_k`` keys). Context parallelism hands it chunks from anywhere in the sequence, so each
(query chunk, key chunk) pair is first classified (:func:`block_kind`):

- ``FULL``: every query sees every key (not causal, or the keys lie wholly in every query's past and window):
  a non-causal call.
- ``DIAGONAL``: the same chunk of positions (equal lengths): a causal call, bottom-right alignment is exact,
  and a window is passed on unchanged.
- ``SKIP``: no query sees any key (future keys, or keys older than every query's window): no call.
- ``BAND``: past keys that a sliding window cuts: query ``i`` sees the key *suffix* ``j >= i + a``. A backend
  can only cut key *prefixes* (``j <= i + offset``). Reversing both queries and keys turns the suffix into a
  prefix: with ``i' = m - 1 - i`` and ``j' = n - 1 - j`` the rule reads ``j' <= i' + (n - m - a)``. The
  reversed rows that see every key get a non-causal call, those that see a prefix a causal call on exactly the
  keys that make bottom-right alignment hold, those that see nothing get zeros; then the rows are reversed back.

Chunks must be disjoint or identical (true of every sharding in :mod:`attnlab.parallel.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

__all__ = ["Attend", "BlockKind", "block_attention", "block_kind"]

#: attend(q, k, v, causal, window) -> (out, lse): the backend with every other option of the call fixed.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, int | None], tuple[torch.Tensor, torch.Tensor]]


class BlockKind(Enum):
    SKIP = "skip"
    FULL = "full"
    DIAGONAL = "diagonal"
    BAND = "band"


def block_kind(q_start: int, q_len: int, k_start: int, k_len: int, causal: bool, window: int | None) -> BlockKind:
    """How queries at positions ``[q_start, q_start + q_len)`` see keys at ``[k_start, k_start + k_len)``."""
    if not causal:
        return BlockKind.FULL
    if q_start == k_start and q_len == k_len:
        return BlockKind.DIAGONAL
    if k_start >= q_start + q_len:  # keys in every query's future
        return BlockKind.SKIP
    if k_start + k_len > q_start:
        raise ValueError(
            f"query chunk [{q_start}, {q_start + q_len}) and key chunk [{k_start}, {k_start + k_len}) overlap "
            "without being equal; chunks must be disjoint or identical"
        )
    if window is None:  # wholly in the past
        return BlockKind.FULL
    if k_start + k_len - 1 < q_start - window + 1:  # even the first query's window starts after the last key
        return BlockKind.SKIP
    if k_start >= q_start + q_len - window:  # even the last query's window reaches back to the first key
        return BlockKind.FULL
    return BlockKind.BAND


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_start: int,
    k_start: int,
    causal: bool,
    window: int | None,
    attend: Attend,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(out (b, h, m, d), lse (b, h, m)) of the queries q (b, h, m, d) over k, v (b, h_kv, n, d), or None (SKIP)."""
    kind = block_kind(q_start, q.shape[2], k_start, k.shape[2], causal, window)
    if kind is BlockKind.SKIP:
        return None
    if kind is BlockKind.FULL:
        return attend(q, k, v, False, None)
    if kind is BlockKind.DIAGONAL:
        return attend(q, k, v, True, window)
    # BAND: query i sees keys j >= i + a (all of them before the query: the upper bound never binds)
    a = (q_start - k_start) - window + 1
    return _band(q, k, v, a, attend)


def _band(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: int, attend: Attend
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query ``i`` sees keys ``j >= i + a``: reverse, cut key prefixes with bottom-right causal calls, reverse back."""
    b, h, m, head_dim = q.shape
    n = k.shape[2]
    q_rev, k_rev, v_rev = q.flip(2), k.flip(2), v.flip(2)  # (b, h, m, d), (b, h_kv, n, d) x 2
    offset = n - m - a  # reversed row i' sees reversed keys j' <= i' + offset
    first = max(0, -offset)  # rows before it see no key
    full = min(m, max(first, n - 1 - offset))  # rows from it on see every key
    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    if first > 0:
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        outs.append(q.new_zeros(b, h, first, head_dim))  # (b, h, first, d)
        lses.append(torch.full((b, h, first), float("-inf"), dtype=lse_dtype, device=q.device))  # (b, h, first)
    if full > first:  # keys [0, full + offset): bottom-right puts row i' at position i' + offset
        out, lse = attend(
            q_rev[:, :, first:full], k_rev[:, :, : full + offset], v_rev[:, :, : full + offset], True, None
        )
        outs.append(out)
        lses.append(lse)
    if m > full:
        out, lse = attend(q_rev[:, :, full:], k_rev, v_rev, False, None)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2).flip(2), torch.cat(lses, dim=2).flip(2)  # (b, h, m, d), (b, h, m)
