"""``flash_torch``: FlashAttention-2 in plain PyTorch, the readable specification of the Triton kernels.

**Forward.** The queries are cut into blocks of ``block_m`` rows and the keys/values into tiles of
``block_n`` columns. For each query block the key tiles stream past while a running softmax is kept per
row: the running max ``m_i``, the running sum of exponentials ``l_i`` and the unnormalised output ``acc``.
When a tile raises the max, what was summed so far is rescaled by ``exp(m_old - m_new)``. Nothing of size
``t_q x t_k`` is ever stored; the forward keeps only the output and each row's log-sum-exp ``lse``.

**Which tiles.** Every visibility rule of :class:`AttentionSpec` (causal, sliding window, packed
sequences) gives query ``i`` one interval of keys ``lo[i] <= j <= hi[i]`` (:func:`common.key_bounds`).
:func:`tile_plan` turns the intervals into two lists per query block: the ``unmasked`` tiles, inside every
row's interval (plain matmul, no mask), and the ``masked`` tiles, which some row sees only in part (an
additive 0 / -inf mask). Tiles no row sees are never visited, so a window of ``w`` keys costs ``t * w``
work instead of ``t^2``, and packed sequences cost ``sum t_i^2``. The forward walks the two lists as two
phases, named as in the kernels. With per-row key lengths (``kv_lens``) every batch row has its own
intervals (its queries end at its own last key), so its own plan: the heads are then grouped within a batch
row, and a row's tiles past its length are never visited (their ``dk``, ``dv`` stay zero).

**Scores** follow the spec: ``s = (scale q) k^T``; the softcap ``c * tanh(s / c)``; ALiBi ``- slope * |p_i - j|``;
then the mask. A **sink** is one more logit in each row's denominator: after the loop,
``out = acc / l_i * sigmoid(lse - sink)`` (``Z / (Z + e^sink)`` written so it cannot overflow).

**GQA / MQA.** A key/value head serves the ``group = h // h_kv`` query heads that share it. The queries of
a group are packed as the rows of one tile, row ``i * group + g`` holding query ``i`` of the group's head
``g``, so one score matmul ``(group * block_m, d) x (d, block_n)`` serves the whole group and the keys are
never repeated. Several key/value heads go through each tile's matmuls together (a batched ``bmm``): on a
CPU, one large call beats many small ones.

**Backward.** FlashAttention-2's recomputation: each probability tile is rebuilt from ``q``, ``k`` and the
row normaliser (``lse``, joined with the sink), never read from a stored attention matrix, so memory grows
with ``t``, not ``t^2``. With ``delta_i = dO_i . O_i`` the score gradient is ``dS = P * (dP - delta)``
(times ``1 - tanh^2`` under a softcap); ``dq = scale dS k``, ``dk = dS^T (scale q)``, ``dv = P^T dO``. The
loop is the ``dkdv`` pass of the Triton kernels: per key tile, over the query blocks that see it (the
same plan read by columns), with the same two phases. Its rows are a whole query group, so ``dk`` and
``dv`` sum over the group's heads. The kernels also run a separate ``dq`` pass (per query block, over its
key tiles), because parallel programs cannot share ``dq`` without atomics; one sequential CPU loop adds
each tile's ``dS k`` to ``dq`` in place instead, and so recomputes every tile once, not twice (a separate
pass measured 1.3x slower for forward + backward). ``delta`` and the per-row sink terms are computed
before the loop. The sinks' gradient is ``-sum_i P_sink_i * delta_i`` over each head's rows; the returned
``lse`` is differentiable too (its gradient joins ``dS`` through ``delta``).

Numerics mirror the kernels: scores, softmax and accumulators in float32 (float64 for float64 inputs);
probabilities and ``dS`` are rounded to the input dtype only for their products with ``v``, ``dO``, ``k``
and ``q``. A row that sees no key outputs zeros; internally its ``lse`` is ``+inf``, which makes every
recomputed probability ``exp(-inf) = 0`` (zero, finite gradients); it is *returned* as ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import key_bounds, zero_past_kv_lens
from .spec import AttentionSpec

__all__ = [
    "DEFAULT_BLOCK",
    "FEATURES",
    "TilePlan",
    "check_block_size",
    "default_block_size",
    "flash_torch_attention",
    "flash_torch_backward",
    "flash_torch_forward",
    "tile_plan",
]

#: The optional features of :class:`AttentionSpec` this backend does (the registry refuses the others).
FEATURES: frozenset[str] = frozenset(
    {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse"}
)

#: Default query and key block size. On a CPU, 128 x 128 tiles batched over a group of heads keep the
#: matmuls large while a group's working set stays near L2; see docs/flash-notes.md for the measurements.
DEFAULT_BLOCK = 128
#: Elements in one head group's score tile: 2**18 float32 values = 1 MiB.
TILE_ELEMENTS = 2**18


def check_block_size(name: str, value: int) -> None:
    """Raise ``ValueError`` unless a block size is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


#: With a sliding window, tiles of at least this many rows (see :func:`default_block_size`).
MIN_WINDOW_BLOCK = 64


def default_block_size(num_heads: int, window: int | None = None) -> int:
    """The block size used when none is given: 128, or 256 when fewer than 16 (b*h) heads share a tile.

    With few heads a 128 x 128 tile is too small a matmul and Python's per-tile cost dominates. With a
    window of ``w`` keys, every tile a query block visits is cut by the window's edges unless the tiles are
    small next to ``w``: tiles of about ``w / 4`` rows (at least 64) keep the masked, partly wasted edge
    tiles a small share of the work. Measured on a 2-core CPU at t=8192, h=8, w=256: 64 x 64 tiles ran the
    windowed forward 1.6x faster than 256 x 256 (docs/benchmarks.md).
    """
    block = DEFAULT_BLOCK if num_heads >= 16 else 2 * DEFAULT_BLOCK
    if window is not None:
        block = min(block, max(MIN_WINDOW_BLOCK, 1 << max(0, (window // 4).bit_length() - 1)))
    return block


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _round_like(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the input dtype (what the kernel feeds its matmuls), keep the accumulator dtype."""
    return p if dtype in (torch.float32, torch.float64) else p.to(dtype).to(p.dtype)


# -- which tiles to visit ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TilePlan:
    """The key tiles each query block visits, split into the two phases, and the same seen from the keys.

    ``unmasked[m]`` / ``masked[m]``: first keys ``j0`` of the tiles query block ``m`` (rows
    ``[m * block_m, (m + 1) * block_m)``) visits without / with a mask. ``unmasked_blocks[n]`` /
    ``masked_blocks[n]``: the query blocks that visit key tile ``n`` (keys ``[n * block_n, ...)``), for the
    dkdv pass. ``lo``, ``hi`` (t_q,) int64 on the CPU: each query's key interval (``common.key_bounds``).
    """

    block_m: int
    block_n: int
    t_k: int
    lo: torch.Tensor
    hi: torch.Tensor
    unmasked: tuple[tuple[int, ...], ...]
    masked: tuple[tuple[int, ...], ...]
    unmasked_blocks: tuple[tuple[int, ...], ...]
    masked_blocks: tuple[tuple[int, ...], ...]

    def num_tiles(self) -> tuple[int, int]:
        """(unmasked, masked) score tiles per head group: the forward's work, in tiles."""
        return sum(map(len, self.unmasked)), sum(map(len, self.masked))


def _per_block(values: torch.Tensor, pad_value: int, block: int, largest: bool) -> list[int]:
    """Max (``largest``) or min of ``values`` (t,) over each block of ``block`` rows; padding holds ``pad_value``."""
    blocks = -(-values.numel() // block)
    padded = F.pad(values, (0, blocks * block - values.numel()), value=pad_value).view(blocks, block)  # (blocks, bm)
    return (padded.amax(dim=1) if largest else padded.amin(dim=1)).tolist()


def tile_plan(
    t_q: int, t_k: int, spec: AttentionSpec, block_m: int, block_n: int, batch_row: int | None = None
) -> TilePlan:
    """Which key tiles each query block visits, and which of those need a mask (see the module docstring).

    With ``spec.kv_lens`` the intervals differ per batch row: ``batch_row`` says whose plan to make.

    A block visits the tiles from the one holding the first key any of its rows sees to the one holding
    the last (under causal, window and packing alike, a block's rows together see one contiguous run of
    keys; were there a gap, its tiles would merely be masked out). A tile is ``unmasked`` when it lies
    inside every row's interval, i.e. within ``[max lo, min hi]``; every other visited tile is ``masked``.
    """
    check_block_size("block_m", block_m)
    check_block_size("block_n", block_n)
    lo, hi = key_bounds(t_q, t_k, spec, "cpu")  # (t_q,) each, or (b, t_q) with kv_lens
    if lo.dim() == 2:  # per-row key lengths: this batch row's intervals
        if batch_row is None:
            raise ValueError("tile_plan with kv_lens needs batch_row: every batch row has its own plan")
        lo, hi = lo[batch_row], hi[batch_row]  # (t_q,) each
    has_key = hi >= lo  # (t_q,)
    lo_or_end = torch.where(has_key, lo, t_k)  # (t_q,); a row without keys constrains nothing below...
    hi_or_none = torch.where(has_key, hi, -1)  # (t_q,); ...and nothing above
    first = _per_block(lo_or_end, t_k, block_m, largest=False)  # first key any row of the block sees
    last = _per_block(hi_or_none, -1, block_m, largest=True)  # last key any row sees
    inner_lo = _per_block(lo_or_end, 0, block_m, largest=True)  # every row sees [inner_lo, inner_hi]
    inner_hi = _per_block(hi_or_none, t_k, block_m, largest=False)  # (empty when a row sees no key)
    n_tiles = -(-t_k // block_n)
    unmasked, masked = [], []
    unmasked_blocks: list[list[int]] = [[] for _ in range(n_tiles)]
    masked_blocks: list[list[int]] = [[] for _ in range(n_tiles)]
    for m in range(len(first)):
        full, partial = [], []
        for j0 in range(first[m] - first[m] % block_n, last[m] + 1, block_n):
            j1 = min(j0 + block_n, t_k)
            inside = inner_lo[m] <= j0 and j1 - 1 <= inner_hi[m]
            (full if inside else partial).append(j0)
            (unmasked_blocks if inside else masked_blocks)[j0 // block_n].append(m)
        unmasked.append(tuple(full))
        masked.append(tuple(partial))
    return TilePlan(
        block_m, block_n, t_k, lo, hi, tuple(unmasked), tuple(masked),
        tuple(map(tuple, unmasked_blocks)), tuple(map(tuple, masked_blocks)),
    )  # fmt: skip


class _MaskTiles:
    """Additive 0 / -inf masks for the masked tiles, one per distinct pattern (a few serve every diagonal).

    Query ``i`` may see key ``j`` iff ``lo[i] <= j <= hi[i]``; a tile's mask depends only on those bounds
    relative to its first key, which is the cache key. Rows are repeated ``group`` times to match the packed
    query rows of GQA. Adding the mask inside the score matmul (``baddbmm``) costs less than a ``masked_fill``.
    """

    def __init__(self, plan: TilePlan, group: int, dtype: torch.dtype, device: torch.device) -> None:
        self.plan, self.group, self.dtype, self.device = plan, group, dtype, device
        self.by_pattern: dict[tuple, torch.Tensor] = {}
        self.by_tile: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """The (group * (i1 - i0), j1 - j0) mask of query rows [i0, i1) against keys [j0, j1)."""
        if (i0, j0) not in self.by_tile:
            rel_lo = (self.plan.lo[i0:i1] - j0).clamp(0, j1 - j0)  # (bm,) first visible column
            rel_hi = (self.plan.hi[i0:i1] - j0).clamp(-1, j1 - j0 - 1)  # (bm,) last visible column
            pattern = (j1 - j0, rel_lo.numpy().tobytes(), rel_hi.numpy().tobytes())
            if pattern not in self.by_pattern:
                cols = torch.arange(j1 - j0)  # (bn,)
                hidden = (cols[None, :] < rel_lo[:, None]) | (cols[None, :] > rel_hi[:, None])  # (bm, bn)
                mask = torch.zeros(hidden.shape, dtype=self.dtype).masked_fill_(hidden, float("-inf"))  # (bm, bn)
                rows = mask.repeat_interleave(self.group, dim=0)  # (group*bm, bn): each query's row per head
                self.by_pattern[pattern] = rows.to(self.device)
            self.by_tile[(i0, j0)] = self.by_pattern[pattern]
        return self.by_tile[(i0, j0)]


# -- one score tile --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Scores:
    """What turns a tile of dot products into the spec's scores: softcap, ALiBi, the masks.

    ``neg_slopes`` (g_kv, 1, group, 1): minus each packed row's ALiBi slope, for one head group;
    ``query_pos`` (t_q, 1) and ``key_pos`` (1, t_k): positions for the ALiBi distance.
    """

    masks: _MaskTiles
    group: int
    softcap: float | None = None
    neg_slopes: torch.Tensor | None = None
    query_pos: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None

    def for_heads(self, heads: slice) -> _Scores:
        """The same, for one group of key/value heads."""
        if self.neg_slopes is None:
            return self
        return _Scores(self.masks, self.group, self.softcap, self.neg_slopes[heads], self.query_pos, self.key_pos)

    def __call__(
        self, q_blk: torch.Tensor, k_tile: torch.Tensor, i0: int, i1: int, j0: int, j1: int, masked: bool,
        keep_tanh: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """``(attn_scores, tanh)`` of packed query rows q_blk (g, group*bm, d), pre-scaled, against k_tile (g, bn, d).

        ``attn_scores`` (g, group*bm, bn); ``tanh`` = ``tanh(s / softcap)`` when ``keep_tanh`` (the backward's
        softcap gradient needs it), else None.
        """
        mask = self.masks(i0, i1, j0, j1) if masked else None  # (group*bm, bn) or None
        k_t = k_tile.transpose(1, 2)  # (g, d, bn)
        if self.softcap is None and self.neg_slopes is None:  # the plain path: the mask rides in the matmul
            return (torch.bmm(q_blk, k_t) if mask is None else torch.baddbmm(mask, q_blk, k_t)), None
        attn_scores = torch.bmm(q_blk, k_t)  # (g, group*bm, bn)
        tanh = None
        if self.softcap is not None:  # s = c tanh(s / c), before ALiBi and the mask (-inf would cap to -c)
            if keep_tanh:
                tanh = attn_scores.div_(self.softcap).tanh_()  # (g, group*bm, bn)
                attn_scores = tanh * self.softcap
            else:
                attn_scores.div_(self.softcap).tanh_().mul_(self.softcap)
        if self.neg_slopes is not None:  # s -= slope_h |p_i - j|, on the (g, bm, group, bn) view of the rows
            distance = (self.query_pos[i0:i1] - self.key_pos[:, j0:j1]).abs_()  # (bm, bn)
            g, rows, cols = attn_scores.shape
            grouped = attn_scores.view(g, rows // self.group, self.group, cols)  # (g, bm, group, bn)
            grouped.addcmul_(self.neg_slopes, distance.unsqueeze(1))  # (g, 1, group, 1) x (bm, 1, bn)
        if mask is not None:
            attn_scores.add_(mask)
        return attn_scores, tanh


# -- layout: GQA packing and head groups ----------------------------------------------------------------


def _pack_queries(x: torch.Tensor, h_kv: int, dtype: torch.dtype, factor: float = 1.0) -> torch.Tensor:
    """(b, h, t, d) -> (b*h_kv, t*group, d) in ``dtype`` times ``factor``: row ``i*group + g`` is query ``i``
    of the group's head ``g``. Always a fresh tensor (the input is left alone)."""
    b, h, t, head_dim = x.shape
    group = h // h_kv
    packed = torch.empty(b, h_kv, t, group, head_dim, dtype=dtype, device=x.device)  # (b, h_kv, t, group, d)
    packed.copy_(x.unflatten(1, (h_kv, group)).transpose(2, 3))  # (b, h_kv, group, t, d) read as (b, h_kv, t, group, d)
    if factor != 1.0:
        packed.mul_(factor)
    return packed.view(b * h_kv, t * group, head_dim)


def _pack_rows(x: torch.Tensor, h_kv: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-row values (b, h, t) -> (b*h_kv, t*group) in ``dtype``, in the packed row order of :func:`_pack_queries`."""
    return _pack_queries(x.unsqueeze(-1), h_kv, dtype).squeeze(-1)


def _unpack_queries(x: torch.Tensor, b: int, h: int, h_kv: int) -> torch.Tensor:
    """(b*h_kv, t*group, ...) -> (b, h, t, ...): the inverse of :func:`_pack_queries` (a view if group == 1)."""
    group = h // h_kv
    grouped = x.view(b, h_kv, x.shape[1] // group, group, *x.shape[2:])  # (b, h_kv, t, group, ...)
    return grouped.transpose(2, 3).reshape(b, h, x.shape[1] // group, *x.shape[2:])  # (b, h, t, ...)


def _head_groups(num_heads: int, rows: int, block_n: int) -> list[slice]:
    """Split the b*h_kv key/value heads into groups whose (heads, rows, block_n) score tile fits a CPU's L2.

    All heads of a group go through each tile's matmuls together (one batched call instead of one per
    head); capping the tile at 2**18 elements (1 MiB in float32, 2 MiB in float64) keeps the elementwise
    softmax passes in cache.
    """
    heads = max(1, TILE_ELEMENTS // (rows * block_n))
    return [slice(start, min(start + heads, num_heads)) for start in range(0, num_heads, heads)]


@dataclass(frozen=True, eq=False)
class _Layout:
    """The shapes of one call and the per-call objects its passes share: the tile plan and the score options."""

    b: int
    h: int
    h_kv: int
    t_q: int
    t_k: int
    head_dim: int
    block_m: int
    block_n: int
    scale: float
    acc_dtype: torch.dtype
    in_dtype: torch.dtype
    plans: tuple[TilePlan, ...]  # one shared by every batch row, or one per batch row (kv_lens)
    scores: tuple[_Scores, ...]  # the same: the score options (masks, ALiBi positions) of each plan

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA); 1 without GQA."""
        return self.h // self.h_kv

    def head_groups(self) -> list[tuple[slice, TilePlan, _Scores]]:
        """The key/value heads (of the b*h_kv) that go through each tile's matmuls together, with their plan and
        score options. With one plan per batch row (kv_lens), a group never spans two batch rows."""
        rows, heads_per_plan = self.block_m * self.group, self.b * self.h_kv // len(self.plans)
        groups = []
        for r, (plan, scores) in enumerate(zip(self.plans, self.scores, strict=True)):
            first = r * heads_per_plan  # this plan's first key/value head
            for heads in _head_groups(heads_per_plan, rows, self.block_n):
                heads = slice(first + heads.start, first + heads.stop)
                groups.append((heads, plan, scores.for_heads(heads)))
        return groups

    def rows(self, m: int) -> tuple[int, int, slice]:
        """Query block ``m``: its first and end query ``i0, i1`` and its packed rows."""
        i0 = m * self.block_m
        i1 = min(i0 + self.block_m, self.t_q)
        return i0, i1, slice(i0 * self.group, i1 * self.group)

    def keys(self, j0: int) -> tuple[int, slice]:
        """The key tile starting at ``j0``: its end and its slice."""
        j1 = min(j0 + self.block_n, self.t_k)
        return j1, slice(j0, j1)

    def per_row(self, values: torch.Tensor) -> torch.Tensor:
        """One value per query head (h,) -> one per packed row (b*h_kv, t_q*group), in the accumulator dtype."""
        per_head = values.to(self.acc_dtype).view(1, self.h_kv, 1, self.group)  # (1, h_kv, 1, group)
        rows = per_head.expand(self.b, self.h_kv, self.t_q, self.group)  # (b, h_kv, t_q, group)
        return rows.reshape(self.b * self.h_kv, self.t_q * self.group)


def _layout(q: torch.Tensor, k: torch.Tensor, spec: AttentionSpec, block_m: int, block_n: int) -> _Layout:
    """Everything one call's forward and backward share, built once from the shapes and the spec."""
    b, h, t_q, head_dim = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    group = h // h_kv
    acc_dtype = _accumulator_dtype(q.dtype)
    # One plan for all batch rows, or with kv_lens one per row, whose queries end at its own last key.
    row_keys = [t_k] if spec.kv_lens is None else spec.kv_lens.tolist()  # keys per plan
    plans = tuple(
        tile_plan(t_q, t_k, spec, block_m, block_n, None if spec.kv_lens is None else r) for r in range(len(row_keys))
    )
    neg_slopes = key_pos = None
    if spec.alibi_slopes is not None:
        slopes = spec.alibi_slopes.detach().to(acc_dtype).view(1, h_kv, 1, group, 1)  # (1, h_kv, 1, group, 1)
        neg_slopes = (-slopes).expand(b, h_kv, 1, group, 1).reshape(b * h_kv, 1, group, 1)  # (b*h_kv, 1, group, 1)
        key_pos = torch.arange(t_k, device=q.device).to(acc_dtype).unsqueeze(0)  # (1, t_k)
    scores = []
    for plan, n_keys in zip(plans, row_keys, strict=True):
        query_pos = None
        if spec.alibi_slopes is not None:  # positions aligned bottom-right to the plan's keys
            query_pos = (torch.arange(t_q, device=q.device) + (n_keys - t_q)).to(acc_dtype).unsqueeze(1)  # (t_q, 1)
        masks = _MaskTiles(plan, group, acc_dtype, q.device)
        scores.append(_Scores(masks, group, spec.softcap, neg_slopes, query_pos, key_pos))
    return _Layout(
        b, h, h_kv, t_q, t_k, head_dim, block_m, block_n, spec.scale_for(head_dim), acc_dtype, q.dtype, plans,
        tuple(scores),
    )  # fmt: skip


# -- forward ----------------------------------------------------------------------------------------------


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, layout: _Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``: out (b, h, t_q, d) in q's dtype, lse (b, h, t_q) without the sink, ``+inf`` where no key."""
    lay = layout
    kv_heads = lay.b * lay.h_kv
    q_all = _pack_queries(q, lay.h_kv, lay.acc_dtype, lay.scale)  # (b*h_kv, t_q*group, d), softmax scale folded in
    # A masked tile that straddles a row's length reads keys past it: zeros there, not an unwritten slot's NaN.
    k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)  # (b, h_kv, t_k, d) each
    k_all = k.reshape(kv_heads, lay.t_k, lay.head_dim).to(lay.acc_dtype)  # (b*h_kv, t_k, d)
    v_all = v.reshape(kv_heads, lay.t_k, lay.head_dim).to(lay.acc_dtype)  # (b*h_kv, t_k, d)
    out = torch.empty(kv_heads, lay.t_q * lay.group, lay.head_dim, dtype=q.dtype, device=q.device)  # packed rows
    lse = torch.empty(kv_heads, lay.t_q * lay.group, dtype=lay.acc_dtype, device=q.device)  # (b*h_kv, t_q*group)
    sinks = None if spec.sinks is None else lay.per_row(spec.sinks.detach())  # (b*h_kv, t_q*group)
    for heads, plan, scores in lay.head_groups():
        _forward_heads(
            q_all[heads], k_all[heads], v_all[heads], out[heads], lse[heads],
            None if sinks is None else sinks[heads], lay, plan, scores,
        )  # fmt: skip
    return _unpack_queries(out, lay.b, lay.h, lay.h_kv), _unpack_queries(lse, lay.b, lay.h, lay.h_kv)


def _forward_heads(
    q_all: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    sinks: torch.Tensor | None,
    lay: _Layout,
    plan: TilePlan,
    scores: _Scores,
) -> None:
    """The forward for one group of key/value heads: q_all (g, t_q*group, d) pre-scaled, k_all, v_all (g, t_k, d);
    fills out (g, t_q*group, d) and lse (g, t_q*group). ``sinks`` (g, t_q*group): each packed row's sink logit."""
    g, _, head_dim = q_all.shape
    for m in range(len(plan.unmasked)):
        i0, i1, rows = lay.rows(m)
        q_blk = q_all[:, rows]  # (g, R, d), R = group * (i1 - i0) packed query rows
        n_rows = q_blk.shape[1]
        m_i = torch.full((g, n_rows), float("-inf"), dtype=q_all.dtype, device=q_all.device)  # (g, R)
        l_i = torch.zeros(g, n_rows, dtype=q_all.dtype, device=q_all.device)  # (g, R)
        acc = torch.zeros(g, n_rows, head_dim, dtype=q_all.dtype, device=q_all.device)  # (g, R, d)
        for phase, tiles in (("unmasked", plan.unmasked[m]), ("masked", plan.masked[m])):
            masked = phase == "masked"
            for j0 in tiles:
                j1, keys = lay.keys(j0)
                attn_scores, _ = scores(q_blk, k_all[:, keys], i0, i1, j0, j1, masked)  # (g, R, bn)
                m_new = torch.maximum(m_i, attn_scores.amax(dim=-1))  # (g, R)
                # A row with every key masked so far has m = -inf; subtracting 0 instead keeps exp(-inf) = 0
                # rather than exp(-inf - -inf) = NaN. Unmasked tiles give every row a finite max.
                m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0) if masked else m_new
                probs = attn_scores.sub_(m_safe.unsqueeze(-1)).exp_()  # (g, R, bn), in place
                alpha = torch.exp(m_i - m_safe)  # (g, R) rescales what was summed under the old max
                l_i = l_i.mul_(alpha).add_(probs.sum(dim=-1))
                acc.mul_(alpha.unsqueeze(-1)).baddbmm_(_round_like(probs, lay.in_dtype), v_all[:, keys])  # (g, R, d)
                m_i = m_new
        has_key = l_i > 0  # (g, R); False only for rows that see no key
        lse_blk = torch.where(has_key, m_i + torch.log(l_i), float("inf"))  # (g, R)
        out_blk = acc / torch.where(has_key, l_i, 1.0).unsqueeze(-1)  # (g, R, d); zeros if no key
        if sinks is not None:  # Z / (Z + e^sink) = sigmoid(lse - sink): the share of the mass the keys keep
            out_blk.mul_(torch.sigmoid(lse_blk - sinks[:, rows]).unsqueeze(-1))
        out[:, rows] = out_blk
        lse[:, rows] = lse_blk


# -- backward: the dkdv pass, with the dq pass folded in ------------------------------------------------


def _row_terms(
    do_all: torch.Tensor,
    out_all: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    sinks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per packed row, before the passes: ``(normaliser, delta, dsinks_rows)``, each (b*h_kv, t_q*group).

    ``normaliser`` is the log of the full softmax denominator (keys and sink): ``P_ij = exp(s_ij - normaliser_i)``,
    ``+inf`` for rows that see no key. ``delta_i = dO_i . O_i``; a gradient ``dlse`` of the returned lse adds
    ``dlse_i * exp(s_ij - lse_i) = dlse_i * P_ij * exp(normaliser_i - lse_i)`` to ``dS``, folded into delta.
    ``dsinks_rows = -P_sink_i * delta_i`` (summed per head by the caller).
    """
    delta = (do_all * out_all).sum(dim=-1)  # (b*h_kv, t_q*group)
    has_key = lse != float("inf")  # (b*h_kv, t_q*group)
    normaliser, dsinks_rows = lse, None
    if sinks is not None:
        normaliser = torch.where(has_key, torch.logaddexp(lse, sinks), float("inf"))  # (b*h_kv, t_q*group)
        dsinks_rows = -torch.exp(sinks - normaliser) * delta  # (b*h_kv, t_q*group); P_sink = 0 without keys
    if dlse is not None:
        # exp(normaliser - lse) = 1 / (1 - P_sink): finite unless the sink takes all but e^-88 of a row's mass
        correction = dlse * torch.exp(normaliser - lse)  # (b*h_kv, t_q*group)
        delta = delta - torch.where(has_key, correction, 0.0)
    return normaliser, delta, dsinks_rows


def _tile_grads(
    scores: _Scores,
    q_blk: torch.Tensor,
    k_tile: torch.Tensor,
    v_tile: torch.Tensor,
    do_blk: torch.Tensor,
    normaliser: torch.Tensor,
    delta: torch.Tensor,
    tile: tuple[int, int, int, int],
    masked: bool,
    in_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute one tile's ``probs`` and its score gradient ``dscores``, both (g, R, bn).

    normaliser, delta (g, R, 1); ``dscores`` is with respect to the dot products ``(scale q) k^T``, rounded to
    the input dtype like the kernel's dS operand; ``probs`` in the accumulator dtype.
    """
    i0, i1, j0, j1 = tile
    attn_scores, tanh = scores(q_blk, k_tile, i0, i1, j0, j1, masked, keep_tanh=True)  # (g, R, bn)
    # normaliser = +inf on rows that see no key makes their probabilities exp(-inf) = 0.
    probs = attn_scores.sub_(normaliser).exp_()  # (g, R, bn), in place
    dprobs = torch.bmm(do_blk, v_tile.transpose(1, 2))  # (g, R, bn)
    dscores = dprobs.sub_(delta).mul_(probs)  # (g, R, bn) = P * (dP - delta), in place
    if tanh is not None:  # d(c tanh(x / c)) / dx = 1 - tanh^2
        dscores.mul_(tanh.square_().neg_().add_(1.0))
    return probs, _round_like(dscores, in_dtype)


def _dkdv_pass(
    q_all: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    do_all: torch.Tensor,
    normaliser: torch.Tensor,
    delta: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    lay: _Layout,
    plan: TilePlan,
    scores: _Scores,
) -> None:
    """Per key tile, over the query blocks that see it: fills dk and dv (g, t_k, d) and adds to dq (g, t_q*group, d).

    The Triton kernels split this loop into a ``dq`` pass (per query block) and this ``dkdv`` pass, because
    parallel programs cannot share dq without atomics; one sequential CPU loop accumulates dq in place and
    recomputes each probability tile once instead of twice. A block's rows are the packed queries of every
    head of the group, so the ``dscores^T q`` and ``probs^T dO`` products sum over the group: GQA's dk/dv
    accumulation, with no repeated keys.
    """
    for n, j0 in enumerate(range(0, lay.t_k, lay.block_n)):
        j1, keys = lay.keys(j0)
        k_tile, v_tile = k_all[:, keys], v_all[:, keys]  # (g, bn, d) each
        dk_tile = torch.zeros_like(k_tile)  # (g, bn, d)
        dv_tile = torch.zeros_like(v_tile)  # (g, bn, d)
        for phase, blocks in (("unmasked", plan.unmasked_blocks[n]), ("masked", plan.masked_blocks[n])):
            for m in blocks:
                i0, i1, rows = lay.rows(m)
                q_blk, do_blk = q_all[:, rows], do_all[:, rows]  # (g, R, d) each
                probs, dscores = _tile_grads(
                    scores, q_blk, k_tile, v_tile, do_blk, normaliser[:, rows, None], delta[:, rows, None],
                    (i0, i1, j0, j1), phase == "masked", lay.in_dtype,
                )  # fmt: skip
                dv_tile.baddbmm_(_round_like(probs, lay.in_dtype).transpose(1, 2), do_blk)  # (g, bn, d)
                dk_tile.baddbmm_(dscores.transpose(1, 2), q_blk)  # (g, bn, d); q_all is pre-scaled
                dq[:, rows].baddbmm_(dscores, k_tile)  # (g, R, d), unscaled
        dk[:, keys] = dk_tile
        dv[:, keys] = dv_tile


def _backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    spec: AttentionSpec,
    layout: _Layout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(dq, dk, dv, dsinks)`` from the saved ``lse`` (``+inf`` where no key); dsinks None without sinks."""
    lay = layout
    kv_heads = lay.b * lay.h_kv
    q_all = _pack_queries(q, lay.h_kv, lay.acc_dtype, lay.scale)  # (b*h_kv, t_q*group, d), pre-scaled
    do_all = _pack_queries(dout, lay.h_kv, lay.acc_dtype)  # (b*h_kv, t_q*group, d)
    out_all = _pack_queries(out, lay.h_kv, lay.acc_dtype)  # (b*h_kv, t_q*group, d)
    # A masked tile that straddles a row's length reads keys past it: zeros there, not an unwritten slot's NaN.
    k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)  # (b, h_kv, t_k, d) each
    k_all = k.reshape(kv_heads, lay.t_k, lay.head_dim).to(lay.acc_dtype)  # (b*h_kv, t_k, d)
    v_all = v.reshape(kv_heads, lay.t_k, lay.head_dim).to(lay.acc_dtype)  # (b*h_kv, t_k, d)
    sinks = None if spec.sinks is None else lay.per_row(spec.sinks.detach())  # (b*h_kv, t_q*group)
    dlse_all = None if dlse is None else _pack_rows(dlse, lay.h_kv, lay.acc_dtype)  # (b*h_kv, t_q*group)
    normaliser, delta, dsinks_rows = _row_terms(
        do_all, out_all, _pack_rows(lse, lay.h_kv, lay.acc_dtype), dlse_all, sinks
    )  # (b*h_kv, t_q*group) each
    dq = torch.zeros_like(q_all)  # (b*h_kv, t_q*group, d), accumulated over key tiles
    dk = torch.empty_like(k_all)  # (b*h_kv, t_k, d)
    dv = torch.empty_like(v_all)  # (b*h_kv, t_k, d)
    for heads, plan, scores in lay.head_groups():
        inputs = (q_all[heads], k_all[heads], v_all[heads], do_all[heads], normaliser[heads], delta[heads])
        _dkdv_pass(*inputs, dq[heads], dk[heads], dv[heads], lay, plan, scores)
    dq.mul_(lay.scale)  # S = (scale q) k^T, so dq = scale dS k
    dsinks = None
    if dsinks_rows is not None:  # sum over batch and queries: (b, h_kv, t_q, group) -> (h,)
        per_head = dsinks_rows.view(lay.b, lay.h_kv, lay.t_q, lay.group).sum(dim=(0, 2))  # (h_kv, group)
        dsinks = per_head.reshape(lay.h).to(spec.sinks.dtype)  # (h,)
    shape_k = (lay.b, lay.h_kv, lay.t_k, lay.head_dim)
    dq_heads = _unpack_queries(dq, lay.b, lay.h, lay.h_kv)  # (b, h, t_q, d)
    return dq_heads.to(q.dtype), dk.view(shape_k).to(k.dtype), dv.view(shape_k).to(v.dtype), dsinks


# -- autograd and the public entry points ---------------------------------------------------------------


class _FlashAttentionTorch(torch.autograd.Function):
    """Ties the tiled forward to the hand-written backward; saves only q, k, v, out and lse.

    Returns ``(out, lse)``, lse as the spec defines it (``-inf`` where a row sees no key); both carry gradients.
    """

    @staticmethod
    def forward(ctx, q, k, v, sinks, spec, block_m, block_n):
        layout = _layout(q, k, spec, block_m, block_n)
        out, lse = _forward(q, k, v, spec, layout)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec, ctx.layout = spec, layout
        ctx.set_materialize_grads(False)
        return out, lse.masked_fill(lse == float("inf"), float("-inf"))

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout
        dq, dk, dv, dsinks = _backward(dout, q, k, v, out, lse, dlse, ctx.spec, ctx.layout)
        return dq, dk, dv, dsinks, None, None, None


def _block_sizes(q: torch.Tensor, spec: AttentionSpec, block_m: int | None, block_n: int | None) -> tuple[int, int]:
    """The given block sizes, checked, or :func:`default_block_size` for the b*h heads and the window."""
    default = default_block_size(q.shape[0] * q.shape[1], spec.window)
    block_m = default if block_m is None else block_m
    block_n = default if block_n is None else block_n
    check_block_size("block_m", block_m)
    check_block_size("block_n", block_n)
    return block_m, block_n


def _check_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> None:
    """For the standalone halves: what ``Backend.attend`` checks (tensors, options, features)."""
    if not isinstance(spec, AttentionSpec):
        raise ValueError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
    spec.check(q, k, v)
    for feature in spec.features(q, k):
        if feature not in FEATURES:
            raise ValueError(f"flash_torch does not support {feature}")


def flash_torch_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward alone: ``(out, lse)``, out (b, h, t_q, d) in q's dtype, lse (b, h, t_q) float32/64.

    lse is the saved one: without the sink, ``+inf`` on rows that see no key (the backend returns ``-inf``).
    """
    _check_call(q, k, v, spec)
    block_m, block_n = _block_sizes(q, spec, block_m, block_n)
    return _forward(q, k, v, spec, _layout(q, k, spec, block_m, block_n))


def flash_torch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    spec: AttentionSpec,
    *,
    dlse: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """FlashAttention-2 backward alone: ``(dq, dk, dv, dsinks)`` (dsinks None without sinks).

    ``out`` and ``lse`` as :func:`flash_torch_forward` returned them; ``dlse``: an optional gradient of lse.
    The ``dq`` pass, then the ``dkdv`` pass (see the module docstring).
    """
    _check_call(q, k, v, spec)
    for name, tensor, shape in (("dout", dout, q.shape), ("out", out, q.shape), ("lse", lse, q.shape[:3])):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {got}")
    if dlse is not None and (not isinstance(dlse, torch.Tensor) or dlse.shape != q.shape[:3]):
        raise ValueError(f"dlse must be None or have shape {tuple(q.shape[:3])}")
    block_m, block_n = _block_sizes(q, spec, block_m, block_n)
    return _backward(dout, q, k, v, out, lse, dlse, spec, _layout(q, k, spec, block_m, block_n))


def flash_torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention in PyTorch on q (b, h, t_q, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse (b, h, t_q)].

    The registry's function (inputs checked by ``Backend.attend``). ``block_m`` / ``block_n``: query / key
    rows per tile (default: :func:`default_block_size`). Gradients flow to q, k, v, the sinks and through the
    returned lse; ALiBi slopes are constants (a slopes tensor that requires grad is refused).
    """
    block_m, block_n = _block_sizes(q, spec, block_m, block_n)
    slopes = spec.alibi_slopes
    if slopes is not None and slopes.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "flash_torch computes no gradient for alibi_slopes (ALiBi slopes are fixed); pass "
            "alibi_slopes.detach(), or use the naive backend to learn them"
        )
    out, lse = _FlashAttentionTorch.apply(q, k, v, spec.sinks, spec, block_m, block_n)
    return (out, lse) if spec.return_lse else out
