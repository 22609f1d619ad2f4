"""``flash_decode_torch``: split-KV attention ("flash-decoding") in plain PyTorch, the readable specification
of the Triton kernels in :mod:`attnlab.kernels.flash_decode`.

**Why.** Decoding asks a few new queries (``t_q`` of 1 to 16) about a long history of keys and values. A
FlashAttention forward gives each (batch, head, query block) one program, which here is one program per
key/value head streaming the whole history alone: a GPU with a hundred cores runs a handful of programs.
Flash-decoding also cuts the *keys* of each sequence into ``num_splits`` chunks, processed in parallel:

1. **splits**: every (key/value head, chunk) computes, over its keys only, a partial output ``o_s`` (already
   normalised by its own softmax sum) and its log-sum-exp ``lse_s``;
2. **reduction**: one merge on the lse: ``lse = log sum_s e^{lse_s}``, ``out = sum_s e^{lse_s - lse} o_s``.
   The merge is exact: ``e^{lse_s}`` is chunk ``s``'s share of the softmax denominator. A **sink** joins the
   denominator here, once: ``out *= sigmoid(lse - sink)`` (``Z / (Z + e^sink)``).

**Which keys.** Every visibility rule gives query ``i`` one interval ``lo[i] <= j <= hi[i]``
(:func:`common.key_bounds`). The splits cover only the union of the rows' intervals, so a sliding window
of ``w`` keys reads ``w + t_q - 1`` keys, not the whole history (the chunks outside the window are never
made). A chunk is masked only when some row's interval does not cover the whole union (never for ``t_q = 1``).

**Per-row lengths** (``kv_lens``, flash-decoding's ``cache_seqlens``): each batch row has its own number of
keys, so its own intervals (computed on the device, never read back to the host). The splits then cut the
whole buffer of ``t_k`` keys, the same chunks for every row, and every chunk is masked by its row's
intervals: a split that starts at or past a row's length sees no key of it, gives ``lse_s = -inf`` and
weight 0 in the merge, so it contributes nothing (the kernels skip its key blocks altogether).

**GQA.** The ``group = h // h_kv`` query heads that share a key/value head are rows of one tile: row
``g * t_q + i`` holds query ``i`` of the group's head ``g``. Each key/value head is read once for its whole
group, never repeated.

**Number of splits** (:func:`default_num_splits`), from the length and the device: enough (key/value head,
split) pairs to fill the device, ``2 x`` the CUDA SM count (or the CPU threads) divided by ``b * h_kv``, but
no chunk shorter than :data:`MIN_CHUNK` keys (a shorter chunk costs more in its partial output and merge
than it saves). The length is the keys the splits cut: the union of the rows' intervals, or with ``kv_lens``
the buffer's ``t_k`` (the longest a row can be, known without reading the lengths back from the device). A
``num_splits=`` keyword (``Backend.attend(q, k, v, spec, num_splits=4)``) overrides it; it is clamped to
one chunk per key (per key block in the kernels).

Forward only: decoding is inference. Inputs that require grad while grad is enabled are refused (run under
``torch.no_grad()`` or ``torch.inference_mode()``; train with ``flash_torch``). Scores, softmax and
accumulators are float32 (float64 for float64 inputs); the output is in q's dtype, lse float32 (float64).

Here the splits are one batched matmul per key/value head (a tensor dimension of the chunks' view of the
keys; a view of ``(b, h_kv, splits)`` at once would need a copy of the whole cache whenever the chunks do not
tile it exactly); the kernels run one program per (key/value head, split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import key_bounds, zero_past_kv_lens
from .spec import AttentionSpec

__all__ = [
    "ALL_DEVICE_TYPES",
    "FEATURES",
    "MAX_QUERIES",
    "MIN_CHUNK",
    "SplitPlan",
    "check_forward_only",
    "check_num_queries",
    "default_num_splits",
    "flash_decode_torch_attention",
    "keys_to_split",
    "merge_splits",
    "split_plan",
]

#: The optional features of :class:`AttentionSpec` this backend does (not packed sequences: they are a
#: prefill layout; not dropout: decoding is inference).
FEATURES: frozenset[str] = frozenset({"gqa", "window", "softcap", "sinks", "alibi_slopes", "kv_lens", "return_lse"})

#: Most queries per call: decoding, or speculative decoding's few drafted tokens. A prefill of more is
#: FlashAttention's job (``flash_torch``), whose query blocks already give the device enough programs.
MAX_QUERIES = 16
#: Device types a backend may see; forward-only backends declare all of them as ``no_backward_on``.
ALL_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")
#: The shortest chunk the default heuristic makes, in keys.
MIN_CHUNK = 256


def check_num_queries(name: str, t_q: int) -> None:
    """Raise ``ValueError`` unless ``t_q <= MAX_QUERIES``."""
    if t_q > MAX_QUERIES:
        raise ValueError(
            f"{name} decodes at most {MAX_QUERIES} queries per call, got t_q={t_q}; use flash_torch or "
            "flash_triton for a prefill"
        )


def check_forward_only(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> None:
    """Raise ``ValueError`` when grad is enabled and an input requires grad: these backends have no backward."""
    if not torch.is_grad_enabled():
        return
    tensors = {"q": q, "k": k, "v": v, "sinks": spec.sinks, "alibi_slopes": spec.alibi_slopes}
    needing = [arg for arg, tensor in tensors.items() if tensor is not None and tensor.requires_grad]
    if needing:
        raise ValueError(
            f"{name} is forward-only (decoding is inference) but {', '.join(needing)} require grad; run it under "
            "torch.no_grad() or torch.inference_mode(), or use flash_torch / flash_triton to train"
        )


def default_num_splits(n_keys: int, kv_heads: int, device: torch.device) -> int:
    """The number of key chunks per key/value head when none is given (see the module docstring).

    ``2 x`` the parallel units (CUDA SMs, or the CPU's torch threads) over the ``kv_heads = b * h_kv``
    programs the heads already give, at least 1, and at most one chunk per :data:`MIN_CHUNK` keys.
    """
    if device.type == "cuda":
        units = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        units = torch.get_num_threads()
    wanted = math.ceil(2 * units / max(kv_heads, 1))
    return max(1, min(wanted, n_keys // MIN_CHUNK))


def keys_to_split(t_q: int, t_k: int, spec: AttentionSpec) -> int:
    """How many keys the splits cut (what :func:`default_num_splits` divides): the union of the rows' intervals
    (a window's few keys, not the whole history), or the buffer's ``t_k`` with ``kv_lens`` (not read back)."""
    if spec.kv_lens is not None:
        return t_k
    lo, hi = key_bounds(t_q, t_k, spec)  # (t_q,) each, CPU
    has_key = hi >= lo  # (t_q,)
    return int(hi[has_key].max() - lo[has_key].min() + 1) if bool(has_key.any()) else 0


def _cdiv(a: int, b: int) -> int:
    return -(a // -b)


def _check_num_splits(num_splits: object) -> None:
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """Which keys each split reads: chunks of ``chunk`` keys from ``start``, the last one ragged.

    ``num_splits`` chunks cover keys ``[start, start + n_keys)``, the union of every row's interval; ``lo``,
    ``hi`` (t_q,) int64 on the CPU are the rows' own intervals (``hi < lo``: a row that sees no key);
    ``masked``: whether some row sees less than the union (the chunks then need the interval mask). With
    ``kv_lens``, ``lo`` and ``hi`` are (b, t_q) on the lengths' device and the chunks cover all ``t_k`` keys.
    """

    start: int
    n_keys: int
    chunk: int
    num_splits: int
    lo: torch.Tensor
    hi: torch.Tensor
    masked: bool


def split_plan(t_q: int, t_k: int, spec: AttentionSpec, num_splits: int, block: int = 1) -> SplitPlan:
    """Cut the keys some query sees into at most ``num_splits`` chunks whose lengths are multiples of ``block``.

    More splits than blocks of keys are clamped (one block each at most); with no visible key at all the
    plan has no split. With ``spec.kv_lens`` the chunks cut the whole buffer ``[0, t_k)``, always masked.
    """
    _check_num_splits(num_splits)
    if spec.kv_lens is not None:  # per-row intervals stay on the device; the chunks cover the buffer
        lo, hi = key_bounds(t_q, t_k, spec, spec.kv_lens.device)  # (b, t_q) each
        splits = min(num_splits, _cdiv(t_k, block))
        chunk = _cdiv(_cdiv(t_k, splits), block) * block
        return SplitPlan(0, t_k, chunk, _cdiv(t_k, chunk), lo, hi, True)
    lo, hi = key_bounds(t_q, t_k, spec)  # (t_q,) each
    has_key = hi >= lo  # (t_q,)
    if not bool(has_key.any()):
        return SplitPlan(0, 0, block, 0, lo, hi, False)
    start, end = int(lo[has_key].min()), int(hi[has_key].max()) + 1  # the union of the rows' intervals
    n_keys = end - start
    splits = min(num_splits, _cdiv(n_keys, block))
    chunk = _cdiv(_cdiv(n_keys, splits), block) * block  # ceil(n_keys / splits), rounded up to whole blocks
    masked = not bool(((lo == start) & (hi == end - 1)).all())  # a row without keys is masked too
    return SplitPlan(start, n_keys, chunk, _cdiv(n_keys, chunk), lo, hi, masked)


def merge_splits(
    partial_out: torch.Tensor, partial_lse: torch.Tensor, sinks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduction: partial_out (..., S, R, d), partial_lse (..., S, R) -> out (..., R, d), lse (..., R).

    ``lse = log sum_s e^{lse_s}``; ``out = sum_s e^{lse_s - lse} o_s``; a split whose rows saw no key has
    ``lse_s = -inf`` and weight 0; a row no split gave a key is zeros with ``lse = -inf``. ``sinks``
    (..., R) or None: each row's sink logit, joined to the denominator here, once.
    """
    lse_max = partial_lse.amax(dim=-2)  # (..., R)
    lse_max_safe = lse_max.masked_fill(lse_max == float("-inf"), 0.0)  # exp(-inf - 0) = 0, not NaN
    weights = torch.exp(partial_lse - lse_max_safe.unsqueeze(-2))  # (..., S, R)
    total = weights.sum(dim=-2)  # (..., R); 0 only for rows that see no key
    has_key = total > 0  # (..., R)
    out = (weights.unsqueeze(-1) * partial_out).sum(dim=-3)  # (..., R, d)
    out = out / torch.where(has_key, total, 1.0).unsqueeze(-1)  # (..., R, d)
    lse = torch.where(has_key, lse_max_safe + torch.log(total), float("-inf"))  # (..., R)
    if sinks is not None:  # Z / (Z + e^sink) = sigmoid(lse - sink); rows without keys stay zero
        out = out * torch.sigmoid(lse - sinks).unsqueeze(-1)
    return out, lse


@dataclass(frozen=True, eq=False)
class _ChunkBias:
    """What the scores of one run of chunks add, the same for every key/value head: the interval mask
    (0 / -inf, or None) and ALiBi's ``|p_i - j|`` (or None), both (S, R, chunk) over the packed rows; with
    ``kv_lens`` (``per_row``) both are (b, S, R, chunk), one per batch row."""

    mask: torch.Tensor | None
    distance: torch.Tensor | None
    per_row: bool = False

    def for_batch_row(self, r: int) -> _ChunkBias:
        """The (S, R, chunk) bias of batch row ``r``."""
        if not self.per_row:
            return self
        return _ChunkBias(
            None if self.mask is None else self.mask[r], None if self.distance is None else self.distance[r]
        )


def _chunk_bias(
    plan: SplitPlan,
    run: tuple[int, int, int],
    t_q: int,
    t_k: int,
    group: int,
    spec: AttentionSpec,
    dtype: torch.dtype,
    device: torch.device,
) -> _ChunkBias:
    """The bias of a run of ``(first, splits, length)``: ``splits`` chunks of ``length`` keys from key ``first``,
    over the packed rows ``g * t_q + i``, built where the plan's bounds are (the CPU, or with kv_lens their
    device) and moved to ``device``. With kv_lens every tensor has a leading batch axis (b, ...)."""
    first, splits, length = run
    where = plan.lo.device
    keys = first + torch.arange(splits * length, device=where).view(splits, 1, length)  # (S, 1, chunk) positions
    # Row g * t_q + i has query i's interval: (1, R, 1), or (b, 1, R, 1) per batch row with kv_lens.
    rows_lo = plan.lo.tile(group).unsqueeze(-2).unsqueeze(-1)
    rows_hi = plan.hi.tile(group).unsqueeze(-2).unsqueeze(-1)
    mask = None
    if plan.masked:
        hidden = (keys < rows_lo) | (keys > rows_hi)  # (S, R, chunk) or (b, S, R, chunk)
        mask = torch.zeros(hidden.shape, dtype=dtype, device=where).masked_fill_(hidden, float("-inf")).to(device)
    distance = None
    if spec.alibi_slopes is not None:
        n_keys = t_k if spec.kv_lens is None else spec.kv_lens.to(where).view(-1, 1)  # int, or (b, 1) per row
        query_pos = (torch.arange(t_q, device=where) + (n_keys - t_q)).tile(group)  # (R,) or (b, R)
        distance = (query_pos.unsqueeze(-2).unsqueeze(-1) - keys).abs().to(device=device, dtype=dtype)
    return _ChunkBias(mask, distance, per_row=spec.kv_lens is not None)  # (S, R, chunk) or (b, S, R, chunk) each


def _split_attention(
    q_rows: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: _ChunkBias,
    neg_slopes: torch.Tensor | None,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 1 for one key/value head, every split at once: ``(partial_out (S, R, d), partial_lse (S, R))``.

    q_rows (R, d) pre-scaled; keys, values (S, chunk, d); ``neg_slopes`` (R, 1): minus each row's ALiBi slope.
    """
    attn_scores = torch.matmul(q_rows, keys.transpose(1, 2))  # (S, R, chunk)
    if softcap is not None:
        attn_scores = softcap * torch.tanh(attn_scores / softcap)
    if bias.distance is not None:
        attn_scores = attn_scores + neg_slopes * bias.distance  # (S, R, chunk)
    if bias.mask is not None:
        attn_scores = attn_scores + bias.mask  # (S, R, chunk)
    m_i = attn_scores.amax(dim=-1)  # (S, R)
    m_safe = m_i.masked_fill(m_i == float("-inf"), 0.0)  # a row that sees no key of this chunk: exp(-inf) = 0
    probs = torch.exp(attn_scores - m_safe.unsqueeze(-1))  # (S, R, chunk)
    l_i = probs.sum(dim=-1)  # (S, R)
    acc = torch.bmm(probs, values)  # (S, R, d)
    has_key = l_i > 0  # (S, R)
    partial_out = acc / torch.where(has_key, l_i, 1.0).unsqueeze(-1)  # (S, R, d)
    partial_lse = torch.where(has_key, m_safe + torch.log(l_i), float("-inf"))  # (S, R)
    return partial_out, partial_lse


def flash_decode_torch_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, *, num_splits: int | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Split-KV attention on q (b, h, t_q <= 16, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse (b, h, t_q)].

    The registry's function (inputs checked by ``Backend.attend``); ``num_splits``: key chunks per key/value
    head (default: :func:`default_num_splits`). Forward only.
    """
    check_num_queries("flash_decode_torch", q.shape[2])
    check_forward_only("flash_decode_torch", q, k, v, spec)
    if num_splits is not None:
        _check_num_splits(num_splits)
    b, h, t_q, head_dim = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    group = h // h_kv
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = group * t_q  # R packed rows per key/value head
    heads = b * h_kv
    if num_splits is None:
        num_splits = default_num_splits(keys_to_split(t_q, t_k, spec), heads, q.device)
    plan = split_plan(t_q, t_k, spec, num_splits)
    if plan.num_splits == 0 or heads * rows == 0:  # nobody sees a key (or nothing to compute)
        out = q.new_zeros(q.shape)  # (b, h, t_q, d)
        lse = torch.full((b, h, t_q), float("-inf"), dtype=acc_dtype, device=q.device)  # (b, h, t_q)
        return (out, lse) if spec.return_lse else out

    k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)  # unwritten slots: zeros, not NaN
    # Rows g * t_q + i of key/value head (b, kv): query i of query head kv * group + g, pre-scaled.
    q_rows = q.to(acc_dtype).reshape(heads, rows, head_dim) * spec.scale_for(head_dim)  # (b*h_kv, R, d)
    neg_slopes = None
    if spec.alibi_slopes is not None:
        per_head = -spec.alibi_slopes.to(acc_dtype).view(h_kv, group, 1)  # (h_kv, group, 1)
        neg_slopes = per_head.expand(h_kv, group, t_q).reshape(h_kv, rows, 1)  # (h_kv, R, 1)
    full = plan.n_keys // plan.chunk  # chunks of `chunk` keys, then a ragged one of `tail` keys
    tail = plan.n_keys - full * plan.chunk
    tail_start = plan.start + full * plan.chunk
    runs = [(plan.start, full, plan.chunk)] if full else []
    if tail:
        runs.append((tail_start, 1, tail))
    biases = [_chunk_bias(plan, run, t_q, t_k, group, spec, acc_dtype, q.device) for run in runs]

    partial_out = torch.empty(heads, plan.num_splits, rows, head_dim, dtype=acc_dtype, device=q.device)  # (B,S,R,d)
    partial_lse = torch.empty(heads, plan.num_splits, rows, dtype=acc_dtype, device=q.device)  # (B, S, R)
    for head in range(heads):  # one key/value head at a time; its splits are one batched matmul
        k_head, v_head = k[head // h_kv, head % h_kv], v[head // h_kv, head % h_kv]  # (t_k, d) views
        slopes = None if neg_slopes is None else neg_slopes[head % h_kv]  # (R, 1)
        split = 0
        for (first, splits, length), run_bias in zip(runs, biases, strict=True):
            bias = run_bias.for_batch_row(head // h_kv)  # (S, R, chunk) mask and distances
            keys = k_head[first : first + splits * length].unflatten(0, (splits, length))  # (S, chunk, d) view
            values = v_head[first : first + splits * length].unflatten(0, (splits, length))  # (S, chunk, d)
            o_s, lse_s = _split_attention(
                q_rows[head], keys.to(acc_dtype), values.to(acc_dtype), bias, slopes, spec.softcap
            )  # (S, R, d), (S, R)
            partial_out[head, split : split + splits] = o_s
            partial_lse[head, split : split + splits] = lse_s
            split += splits

    sinks = None
    if spec.sinks is not None:
        per_head = spec.sinks.to(acc_dtype).view(1, h_kv, group, 1)  # (1, h_kv, group, 1)
        sinks = per_head.expand(b, h_kv, group, t_q).reshape(heads, rows)  # (b*h_kv, R)
    out, lse = merge_splits(partial_out, partial_lse, sinks)  # (b*h_kv, R, d), (b*h_kv, R)
    out = out.view(b, h, t_q, head_dim).to(q.dtype)  # rows g * t_q + i of head kv = query i of head kv*group+g
    return (out, lse.view(b, h, t_q)) if spec.return_lse else out
