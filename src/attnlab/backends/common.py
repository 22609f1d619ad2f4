"""Shared pieces of the core attention backends: which keys a query may see, and the ALiBi distances.

The options themselves and their checks live in :mod:`attnlab.backends.spec` (``AttentionSpec``). Here
are the masks that the backends which materialise scores (``naive``, ``sdpa_mask``) build from a spec.

Causal convention (every backend follows it): with ``t_q`` queries and ``t_k`` keys, the queries are
the *last* ``t_q`` positions of the key sequence, so query ``i`` sees keys ``j <= i + (t_k - t_q)``.
This "bottom-right" alignment is what KV-cache decoding needs (one new query sees every cached key)
and is FlashAttention's convention; for ``t_q == t_k`` it is the ordinary lower-triangular mask.
When ``t_q > t_k`` the first ``t_q - t_k`` queries see no key at all: their output is defined as zero.

With per-row key lengths (``spec.kv_lens``, (b,)) the same holds row by row with ``t_k`` replaced by the row's
length ``kv_lens[r]``, and keys at or past it are never seen, so the masks and bounds gain a batch axis: the
helpers below return ``(b, 1, t_q, t_k)`` masks (broadcasting over heads) and ``(b, t_q)`` bounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .spec import AttentionSpec

__all__ = ["alibi_distance", "causal_mask", "key_bounds", "visible_mask", "zero_past_kv_lens"]


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where a query may see a key, aligned bottom-right (see module doc)."""
    # triu(diagonal=1) marks the future; shifting the diagonal by t_k - t_q aligns the last query with the
    # last key.
    future = torch.ones(t_q, t_k, dtype=torch.bool, device=device).triu(diagonal=t_k - t_q + 1)  # (t_q, t_k)
    return ~future


def _row_lengths(kv_lens: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """kv_lens (b,) as int64 (b, 1, 1, 1) on ``device`` (None: the CPU): each batch row's number of keys."""
    return kv_lens.to(device="cpu" if device is None else device, dtype=torch.int64).view(-1, 1, 1, 1)  # (b, 1, 1, 1)


def _positions(
    t_q: int, t_k: int, device: torch.device | str | None, kv_lens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (t_q, 1) aligned bottom-right ((b, 1, t_q, 1) with kv_lens) and key positions (1, t_k)."""
    query_pos = torch.arange(t_q, device=device).unsqueeze(1) - t_q  # (t_q, 1)
    query_pos = query_pos + (t_k if kv_lens is None else _row_lengths(kv_lens, device))  # (t_q, 1) or (b, 1, t_q, 1)
    key_pos = torch.arange(t_k, device=device).unsqueeze(0)  # (1, t_k)
    return query_pos, key_pos


def zero_past_kv_lens(x: torch.Tensor, kv_lens: torch.Tensor | None) -> torch.Tensor:
    """k or v (b, h_kv, t_k, d) with the positions at or past each row's ``kv_lens[r]`` set to zero (x itself
    when ``kv_lens`` is None).

    Those positions get zero weight anyway, but zero times a NaN left in an unwritten cache slot is NaN: the
    backends that read them (every PyTorch one; the Triton kernels never load them) zero them first, so that
    "ignored" holds for any content. Differentiable: the zeroed positions get zero gradient.
    """
    if kv_lens is None:
        return x
    past = torch.arange(x.shape[2], device=x.device).view(1, 1, -1, 1) >= _row_lengths(kv_lens, x.device)  # (b,1,t_k,1)
    return x.masked_fill(past, 0.0)  # (b, h_kv, t_k, d)


def visible_mask(t_q: int, t_k: int, spec: AttentionSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where a query may see a key: causal, window, packed sequences and per-row
    key lengths (then (b, 1, t_q, t_k): row ``r`` sees none of its keys at or past ``kv_lens[r]``)."""
    query_pos, key_pos = _positions(t_q, t_k, device, spec.kv_lens)
    visible = torch.ones(t_q, t_k, dtype=torch.bool, device=device)  # (t_q, t_k)
    if spec.kv_lens is not None:
        visible = visible & (key_pos < _row_lengths(spec.kv_lens, device))  # (b, 1, t_q, t_k)
    if spec.causal:
        visible &= key_pos <= query_pos
    if spec.window is not None:
        visible &= key_pos > query_pos - spec.window
    if spec.seq_lens is not None:  # t_q == t_k: a token's sequence id is the number of starts at or before it
        starts = torch.tensor(spec.seq_starts()[1:], device=device)  # (n - 1,)
        seq_id = torch.bucketize(torch.arange(t_k, device=device), starts, right=True)  # (t,)
        visible &= seq_id.unsqueeze(1) == seq_id.unsqueeze(0)
    return visible


def key_bounds(
    t_q: int, t_k: int, spec: AttentionSpec, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every visibility rule as one interval per query: query ``i`` sees exactly the keys ``lo[i] <= j <= hi[i]``.

    Causal attention caps ``hi`` at the query's position, a window raises ``lo`` to ``p_i - w + 1``, and a packed
    sequence clips both to the query's own sequence; ``hi < lo`` means the query sees no key. The tiled
    (flash) backends need nothing else: a key tile ``[j0, j1)`` is skipped when it lies outside every row's
    interval, and needs masking only when it is not inside all of them. Returns int64 ``lo``, ``hi`` (t_q,);
    with per-row key lengths (``spec.kv_lens``) they are (b, t_q): batch row ``r`` has ``t_k = kv_lens[r]``.
    """
    last_key = t_k - 1  # an int, or (b, 1) with kv_lens
    if spec.kv_lens is not None:
        lengths = spec.kv_lens.to(device="cpu" if device is None else device, dtype=torch.int64)  # (b,)
        last_key = lengths.view(-1, 1) - 1  # (b, 1)
    query_pos = torch.arange(t_q, device=device) + (last_key + 1 - t_q)  # (t_q,) or (b, t_q)
    lo = torch.zeros_like(query_pos)  # (t_q,) or (b, t_q)
    hi = torch.zeros_like(query_pos) + last_key  # (t_q,) or (b, t_q)
    if spec.causal:
        hi = torch.minimum(hi, query_pos)
    if spec.window is not None:
        lo = torch.maximum(lo, query_pos - spec.window + 1)
    if spec.seq_lens is not None:  # t_q == t_k: clip to [start, end) of the query's own sequence
        starts = torch.tensor(spec.seq_starts(), device=device)  # (n,)
        ends = starts + torch.tensor(spec.seq_lens, device=device)  # (n,)
        seq_id = torch.bucketize(query_pos, starts, right=True) - 1  # (t_q,)
        lo = torch.maximum(lo, starts[seq_id])
        hi = torch.minimum(hi, ends[seq_id] - 1)
    return lo, hi


def alibi_distance(
    t_q: int, t_k: int, device: torch.device | str | None = None, kv_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """(t_q, t_k) float32 |p_i - j| ((b, 1, t_q, t_k) with ``kv_lens``): ALiBi subtracts ``slope * distance``."""
    query_pos, key_pos = _positions(t_q, t_k, device, kv_lens)
    return (query_pos - key_pos).abs().to(torch.float32)  # (t_q, t_k) or (b, 1, t_q, t_k)
