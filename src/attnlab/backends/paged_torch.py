"""Paged attention in plain PyTorch: decoding queries read their keys and values through a block table.

The readable specification of the Triton kernel in :mod:`attnlab.kernels.paged_decode` (same names, same
phases). The keys and values of all sequences live in one pool of pages per layer (vLLM's PagedAttention,
:class:`attnlab.serving.PagedKVCache`):

- ``key_pages``, ``value_pages``: ``(num_blocks, h_kv, block_size, head_dim)``;
- ``block_table``: int ``(b, max_blocks)``; row ``r``'s logical block ``n`` (its keys ``n * block_size`` to
  ``(n + 1) * block_size - 1``) is physical page ``block_table[r, n]``;
- ``kv_lens``: int ``(b,)``, row ``r`` has ``kv_lens[r]`` keys (``1 <= kv_lens[r] <= max_blocks * block_size``);
  entries of the table past ``ceil(kv_lens[r] / block_size)`` are never read, nor slots past ``kv_lens[r]``.

Semantics are those of :class:`AttentionSpec` with per-row lengths (the ``kv_lens`` convention of
FlashAttention's ``flash_attn_with_kvcache``): the ``t_q`` queries of row ``r`` are its *last* positions,
query ``i`` at ``p = kv_lens[r] - t_q + i``; causal keeps keys ``j <= p``, a window ``p - w < j``; softcap,
ALiBi (``|p - j|``), sinks, GQA and the returned lse as in :mod:`attnlab.backends.spec`. A query with
``p < 0`` sees no key: zeros, lse ``-inf``. Packed sequences and dropout are refused (a paged batch is
already ragged; decoding is inference), and so is anything that requires grad: forward only.

**The loop.** FlashAttention's online softmax (``m_i``, ``l_i``, ``acc``, as in :mod:`.flash_torch`) with
one key tile per page: for each logical block ``n``, the rows that see some key of it gather their page
``block_table[rows, n]`` and update their running softmax. Per row, a page is ``unmasked`` when it lies
inside every query's interval of keys (plain matmul) and ``masked`` when some query sees only part of it
or the row's last page is partly filled; pages outside every query's interval are never read (a window of
``w`` keys reads about ``w / block_size`` pages whatever the length). Each row's interval is computed on
the host from ``kv_lens`` (one device sync per call).

**GQA.** The ``group = h // h_kv`` query heads of a key/value head are rows of one tile, row ``g * t_q + i``
holding query ``i`` of the group's head ``g``, so each page is read once for its whole group.

Scores, softmax and accumulators are float32 (float64 for float64 inputs); the probabilities are rounded to
the input dtype for their product with the values, as in the kernels. The output is in q's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import AttentionSpec

__all__ = [
    "FEATURES",
    "PagedBounds",
    "check_paged_inputs",
    "check_paged_values",
    "paged_key_bounds",
    "paged_torch_attention",
]

#: The optional features of :class:`AttentionSpec` paged attention does (not packed sequences, not dropout).
FEATURES: frozenset[str] = frozenset({"gqa", "window", "softcap", "sinks", "alibi_slopes", "return_lse"})


def _is_int_tensor(tensor: object) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.int32, torch.int64)


def _check_per_head(name: str, tensor: object, q: torch.Tensor) -> None:
    h = q.shape[1]
    if not isinstance(tensor, torch.Tensor) or tensor.shape != (h,) or not tensor.is_floating_point():
        got = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a floating-point tensor of shape ({h},), one per query head, got {got}")
    if tensor.device != q.device:
        raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")


def check_paged_inputs(
    name: str,
    q: torch.Tensor,
    key_pages: torch.Tensor,
    value_pages: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    spec: AttentionSpec,
    features: frozenset[str],
) -> None:
    """Raise ``ValueError`` unless the call is valid for backend ``name`` doing ``features``: shapes, dtypes,
    devices and options, without reading any tensor's values (no device sync; see :func:`check_paged_values`)."""
    if not isinstance(spec, AttentionSpec):
        raise ValueError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
    if getattr(spec, "kv_lens", None) is not None:
        raise ValueError(f"{name}: paged attention takes kv_lens as its own argument; build the spec without kv_lens")
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or not q.is_floating_point():
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be a 4-D floating-point tensor (batch, heads, tokens, head_dim), got {got}")
    b, h, _, head_dim = q.shape
    for arg, pages in (("key_pages", key_pages), ("value_pages", value_pages)):
        if not isinstance(pages, torch.Tensor) or pages.dim() != 4:
            got = tuple(pages.shape) if isinstance(pages, torch.Tensor) else type(pages).__name__
            raise ValueError(f"{arg} must be 4-D (num_blocks, h_kv, block_size, head_dim), got {got}")
        if pages.dtype != q.dtype or pages.device != q.device:
            raise ValueError(f"{arg} is {pages.dtype} on {pages.device}; q is {q.dtype} on {q.device}")
    if key_pages.shape != value_pages.shape:
        raise ValueError(f"key_pages {tuple(key_pages.shape)} and value_pages {tuple(value_pages.shape)} differ")
    _, h_kv, block_size, page_dim = key_pages.shape
    if page_dim != head_dim or head_dim < 1:
        raise ValueError(f"q's head_dim {head_dim} and the pages' {page_dim} must agree (and be >= 1)")
    if h_kv < 1 or h % h_kv != 0 or block_size < 1:
        raise ValueError(
            f"q has {h} heads and the pages {h_kv} key/value heads of {block_size} slots: the query heads must "
            "be a positive multiple of the key/value heads, and a block at least one slot"
        )
    if not _is_int_tensor(block_table) or block_table.dim() != 2 or block_table.shape[0] != b:
        got = (
            f"{block_table.dtype} {tuple(block_table.shape)}" if isinstance(block_table, torch.Tensor) else block_table
        )
        raise ValueError(f"block_table must be an int32/int64 tensor of shape ({b}, max_blocks), got {got}")
    if not _is_int_tensor(kv_lens) or kv_lens.shape != (b,):
        got = f"{kv_lens.dtype} {tuple(kv_lens.shape)}" if isinstance(kv_lens, torch.Tensor) else kv_lens
        raise ValueError(f"kv_lens must be an int32/int64 tensor of shape ({b},), got {got}")
    for arg, tensor in (("block_table", block_table), ("kv_lens", kv_lens)):
        if tensor.device != q.device:
            raise ValueError(f"{arg} is on {tensor.device} but q is on {q.device}")
    for arg in ("sinks", "alibi_slopes"):
        if getattr(spec, arg) is not None:
            _check_per_head(arg, getattr(spec, arg), q)
    for feature in spec.features(q, key_pages):  # key_pages' dim 1 is h_kv, as k's
        if feature not in features:
            raise ValueError(f"{name}'s paged attention does not support {feature}")
    if torch.is_grad_enabled():
        tensors = {"q": q, "key_pages": key_pages, "value_pages": value_pages, "sinks": spec.sinks}
        needing = [arg for arg, tensor in tensors.items() if tensor is not None and tensor.requires_grad]
        if needing:
            raise ValueError(
                f"{name}'s paged attention is forward-only (decoding) but {', '.join(needing)} require grad; run "
                "it under torch.no_grad() or torch.inference_mode()"
            )


def check_paged_values(key_pages: torch.Tensor, block_table: torch.Tensor, kv_lens: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` unless every ``kv_lens`` lies in ``[1, max_blocks * block_size]`` and every table entry
    a row reads is a page; returns kv_lens as int64 on the CPU. Reads both tensors: one device sync."""
    num_blocks, _, block_size, _ = key_pages.shape
    b = kv_lens.shape[0]
    capacity = block_table.shape[1] * block_size
    lengths = kv_lens.to(device="cpu", dtype=torch.int64)  # (b,)
    if b and (int(lengths.min()) < 1 or int(lengths.max()) > capacity):
        raise ValueError(
            f"kv_lens must lie in [1, {capacity}] (max_blocks {block_table.shape[1]} x block_size {block_size}), "
            f"got {lengths.tolist()}"
        )
    used = torch.arange(block_table.shape[1]) < -(lengths // -block_size)[:, None]  # (b, max_blocks)
    table = block_table.to(device="cpu", dtype=torch.int64)  # (b, max_blocks)
    bad = used & ((table < 0) | (table >= num_blocks))  # (b, max_blocks)
    if bool(bad.any()):
        row, n = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"block_table[{row}, {n}] = {int(table[row, n])} is not a page in [0, {num_blocks}) "
            f"(row {row} has {int(lengths[row])} keys, so it reads its first {int(used[row].sum())} entries)"
        )
    return lengths


@dataclass(frozen=True, eq=False)
class PagedBounds:
    """Per row and query: query ``i`` of row ``r`` sees keys ``lo[r, i] <= j <= hi[r, i]`` (int64 (b, t_q),
    CPU); ``hi < lo``: no key. ``pos`` (b, t_q): the queries' positions (ALiBi's distances)."""

    lo: torch.Tensor
    hi: torch.Tensor
    pos: torch.Tensor


def paged_key_bounds(lengths: torch.Tensor, t_q: int, spec: AttentionSpec) -> PagedBounds:
    """:func:`attnlab.backends.common.key_bounds` with one length per row: query ``i`` at ``kv_lens - t_q + i``."""
    kv = lengths.view(-1, 1)  # (b, 1)
    pos = kv - t_q + torch.arange(t_q).view(1, -1)  # (b, t_q)
    hi = (kv - 1).expand_as(pos)  # (b, t_q)
    lo = torch.zeros_like(pos)  # (b, t_q)
    if spec.causal:
        hi = torch.minimum(hi, pos)
    if spec.window is not None:
        lo = torch.maximum(lo, pos - spec.window + 1)
    return PagedBounds(lo, hi.contiguous(), pos)


def _page_phases(bounds: PagedBounds, block_size: int) -> list[tuple[int, str, list[int]]]:
    """``(n, phase, rows)``: for each logical block ``n``, the rows that read it ``unmasked`` and ``masked``.

    A row reads block ``n`` when some query's interval meets it; unmasked when it lies inside every query's
    interval (then it is also inside the row's ``kv_lens``: every ``hi`` is below it).
    """
    has_key = bounds.hi >= bounds.lo  # (b, t_q)
    big = torch.iinfo(torch.int64).max
    first = torch.where(has_key, bounds.lo, big).amin(dim=1)  # (b,) first key some query sees
    last = torch.where(has_key, bounds.hi, -1).amax(dim=1)  # (b,) last key some query sees
    inner_lo, inner_hi = bounds.lo.amax(dim=1), bounds.hi.amin(dim=1)  # (b,) keys every query sees
    if not bool(has_key.any()):
        return []
    steps = []
    for n in range(int(first.min()) // block_size, int(last.max()) // block_size + 1):
        start, end = n * block_size, (n + 1) * block_size - 1  # the block's keys
        reads = (first <= end) & (last >= start)  # (b,)
        inside = (inner_lo <= start) & (inner_hi >= end)  # (b,)
        for phase, rows in (("unmasked", reads & inside), ("masked", reads & ~inside)):
            if bool(rows.any()):
                steps.append((n, phase, rows.nonzero().flatten().tolist()))
    return steps


def _pack_rows(x: torch.Tensor, h_kv: int) -> torch.Tensor:
    """(b, h, t_q, ...) -> (b, h_kv, group * t_q, ...): row ``g * t_q + i`` is query ``i`` of head ``kv*group+g``."""
    b, h, t_q = x.shape[:3]
    return x.reshape(b, h_kv, (h // h_kv) * t_q, *x.shape[3:])


def paged_torch_attention(
    q: torch.Tensor,
    key_pages: torch.Tensor,
    value_pages: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    spec: AttentionSpec,
    *,
    check_values: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Paged attention: q (b, h, t_q, d) over the pages of each row -> out (b, h, t_q, d) [, lse (b, h, t_q)].

    ``key_pages``, ``value_pages`` (num_blocks, h_kv, block_size, d); ``block_table`` int (b, max_blocks);
    ``kv_lens`` int (b,). See the module docstring for the semantics. Forward only. ``check_values=False``
    skips :func:`check_paged_values` (for tables and lengths a :class:`~attnlab.serving.PagedKVCache` built).
    """
    check_paged_inputs("paged_torch", q, key_pages, value_pages, block_table, kv_lens, spec, FEATURES)
    if check_values:
        lengths = check_paged_values(key_pages, block_table, kv_lens)  # (b,) int64, CPU
    else:
        lengths = kv_lens.to(device="cpu", dtype=torch.int64)  # (b,): the plan needs them on the host
    b, h, t_q, head_dim = q.shape
    h_kv, block_size = key_pages.shape[1], key_pages.shape[2]
    group, rows = h // h_kv, (h // h_kv) * t_q  # R = group * t_q packed rows per key/value head
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    device = q.device
    if b * h * t_q == 0:  # nothing to compute
        out, lse = q.new_zeros(q.shape), torch.full((b, h, t_q), float("-inf"), dtype=acc_dtype, device=device)
        return (out, lse) if spec.return_lse else out
    bounds = paged_key_bounds(lengths, t_q, spec)  # (b, t_q) each, CPU
    # Per packed row g * t_q + i: query i's interval and position, (b, 1, R, 1) on the device.
    row_lo, row_hi, row_pos = (
        x.repeat(1, group).view(b, 1, rows, 1).to(device) for x in (bounds.lo, bounds.hi, bounds.pos)
    )
    offs_n = torch.arange(block_size, device=device)  # (bs,) key offsets within a page
    q_rows = _pack_rows(q, h_kv).to(acc_dtype) * spec.scale_for(head_dim)  # (b, h_kv, R, d), pre-scaled
    neg_slopes = None
    if spec.alibi_slopes is not None:  # (1, h_kv, R, 1): minus the slope of each packed row's head
        slopes = spec.alibi_slopes.to(acc_dtype).view(h_kv, group, 1).expand(h_kv, group, t_q)
        neg_slopes = -slopes.reshape(1, h_kv, rows, 1)
    table = block_table.to(torch.int64)  # (b, max_blocks)
    lengths_dev = lengths.to(device).view(b, 1, 1, 1)  # (b, 1, 1, 1)

    m_i = torch.full((b, h_kv, rows), float("-inf"), dtype=acc_dtype, device=device)  # (b, h_kv, R)
    l_i = torch.zeros(b, h_kv, rows, dtype=acc_dtype, device=device)  # (b, h_kv, R)
    acc = torch.zeros(b, h_kv, rows, head_dim, dtype=acc_dtype, device=device)  # (b, h_kv, R, d)
    for n, phase, row_list in _page_phases(bounds, block_size):
        sel = torch.tensor(row_list, device=device)  # (r,) the batch rows that read block n in this phase
        pages = table[sel, n]  # (r,) their physical pages
        k_tile = key_pages[pages].to(acc_dtype)  # (r, h_kv, bs, d)
        v_tile = value_pages[pages].to(acc_dtype)  # (r, h_kv, bs, d)
        cols = n * block_size + offs_n  # (bs,) the keys' positions
        attn_scores = torch.matmul(q_rows[sel], k_tile.transpose(-1, -2))  # (r, h_kv, R, bs)
        if spec.softcap is not None:
            attn_scores = spec.softcap * torch.tanh(attn_scores / spec.softcap)
        if neg_slopes is not None:
            attn_scores = attn_scores + neg_slopes * (row_pos[sel] - cols).abs()  # (r, h_kv, R, bs)
        if phase == "masked":
            visible = (cols >= row_lo[sel]) & (cols <= row_hi[sel])  # (r, 1, R, bs)
            attn_scores = attn_scores.masked_fill(~visible, float("-inf"))
            # Slots past the row's length may hold anything (even NaN): their values must not reach acc.
            v_tile = v_tile.masked_fill((cols >= lengths_dev[sel]).view(-1, 1, block_size, 1), 0.0)
        m_old = m_i[sel]  # (r, h_kv, R)
        m_new = torch.maximum(m_old, attn_scores.amax(dim=-1))  # (r, h_kv, R)
        # A row with every key masked so far keeps m = -inf; subtracting 0 keeps exp(-inf) = 0, not NaN.
        m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
        probs = torch.exp(attn_scores - m_safe.unsqueeze(-1))  # (r, h_kv, R, bs)
        alpha = torch.exp(m_old - m_safe)  # (r, h_kv, R) rescales what was summed under the old max
        l_i[sel] = l_i[sel] * alpha + probs.sum(dim=-1)
        probs_rounded = probs.to(q.dtype).to(acc_dtype)  # the kernels' P operand is in the input dtype
        acc[sel] = acc[sel] * alpha.unsqueeze(-1) + torch.matmul(probs_rounded, v_tile)  # (r, h_kv, R, d)
        m_i[sel] = m_new

    has_key = l_i > 0  # (b, h_kv, R); False only for rows that see no key
    lse = torch.where(has_key, m_i + torch.log(torch.where(has_key, l_i, 1.0)), float("-inf"))  # (b, h_kv, R)
    out = acc / torch.where(has_key, l_i, 1.0).unsqueeze(-1)  # (b, h_kv, R, d); zeros where no key
    if spec.sinks is not None:  # Z / (Z + e^sink) = sigmoid(lse - sink): the share of the mass the keys keep
        sinks = spec.sinks.to(acc_dtype).view(h_kv, group, 1).expand(h_kv, group, t_q).reshape(1, h_kv, rows)
        out = out * torch.sigmoid(lse - sinks).unsqueeze(-1)
    out = out.reshape(b, h, t_q, head_dim).to(q.dtype)  # rows g * t_q + i of head kv = query i of head kv*group+g
    return (out, lse.reshape(b, h, t_q)) if spec.return_lse else out
