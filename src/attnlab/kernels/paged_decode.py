"""Paged attention kernel: decoding queries read their keys and values through a block table.

The algorithm and names of :mod:`attnlab.backends.paged_torch` (its module docstring explains the layout
and the semantics), one program per (batch row, key/value head, split of its pages, block of packed query rows): grid
``(b * h_kv, num_splits, cdiv(group * t_q, BLOCK_M))``. The rows of the program's tile are the packed queries of the
head's whole group (row ``g * t_q + i``: query ``i`` of the group's head ``g``), so each page is loaded
once for all of them. One key tile is one page (``BLOCK_N = block_size``): logical block ``n`` of the row is
the physical page ``BlockTable[row, n]``, whose keys sit at positions ``n * block_size + offs_n``.

Row ``r`` has ``KvLens[r]`` keys and its query ``i`` sits at ``p = KvLens[r] - t_q + i`` (bottom-right per
row), so the rows' intervals of keys (:func:`.tiles.key_bounds` with ``t_k = KvLens[r]``) are known only in
the kernel. The program loops over the pages between the first key some row sees and the last (within its split), in the
phases of :func:`.flash_fwd.flash_fwd_kernel`: ``masked`` pages cut by some row's lower bound, ``unmasked``
pages inside every row's interval (no mask), ``masked`` pages cut by an upper bound or the row's length. In a
masked page the keys and values past the row's length are not loaded (they may be unwritten slots).
Scores are in base 2 (:mod:`.scores`), the lse stored is natural, ``-inf`` for rows that see no key; a sink
joins the denominator at the end. Forward only.

**Splits** (``SPLIT``, flash-decoding as in :mod:`.flash_decode`): with grid ``(b * h_kv, num_splits, row
blocks)``, split ``s`` reads only the row's logical blocks ``[s * pages_per_split, (s + 1) * pages_per_split)``
and writes a partial output (normalised by its own sum) and its lse; :func:`.flash_decode.flash_decode_reduce_kernel`
merges them on the lse and joins the sink. Without ``SPLIT`` the grid's split axis has one entry and the
program writes the output itself.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scores import LOG2E, attn_scores_base2
from .tiles import key_bounds

__all__ = ["paged_decode_kernel"]

LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
BIG: tl.constexpr = tl.constexpr(2**30)  # above any key position (kv_lens fit int32)


@triton.jit
def paged_decode_kernel(
    Q, KeyPages, ValuePages, BlockTable, KvLens, Out, Lse, Sinks, AlibiSlopes, PartialOut, PartialLse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kp, stride_kh, stride_kn, stride_kd,
    stride_vp, stride_vh, stride_vn, stride_vd,
    stride_tb, stride_tn,
    stride_ob, stride_oh, stride_om, stride_od,
    h_kv, t_q, num_rows, sm_scale, softcap, window, pages_per_split, num_splits,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    SINKS: tl.constexpr,
    SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    off_bkv = tl.program_id(0).to(tl.int64)  # (batch row, key/value head)
    off_b, off_kv = off_bkv // h_kv, off_bkv % h_kv
    split = tl.program_id(1)  # this program's share of the row's pages (0 when not SPLIT)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) packed rows g * t_q + i
    row_ok = rows < num_rows
    query = rows % t_q  # (BLOCK_M,) the row's query i
    head = off_kv * GROUP + rows // t_q  # (BLOCK_M,) the row's query head
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key offsets within a page
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = (
        Q + off_b * stride_qb + head[:, None] * stride_qh + query[:, None] * stride_qm + offs_d[None, :] * stride_qd
    )
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    kv_len = tl.load(KvLens + off_b).to(tl.int32)  # this row's keys
    k_lo, k_hi = key_bounds(query, t_q, kv_len, window, None, None, CAUSAL, WINDOW, False)  # (BLOCK_M,)
    k_hi = tl.where(row_ok, k_hi, -1)  # padding rows see nothing
    query_pos = query + (kv_len - t_q)  # (BLOCK_M,) positions, bottom-right in this row (ALiBi's distances)
    alibi_slope = tl.load(AlibiSlopes + head, mask=row_ok, other=0.0).to(tl.float32) if ALIBI else 0.0

    # The phases, in pages: [n_start, unmasked_start) masked, [unmasked_start, unmasked_end) unmasked,
    # [unmasked_end, n_end) masked. The program's rows see keys in [first, last]; all of them see [inner_lo, inner_hi].
    has_key = row_ok & (k_hi >= k_lo)  # (BLOCK_M,)
    first = tl.min(tl.where(has_key, k_lo, BIG), 0)
    last = tl.max(tl.where(has_key, k_hi, -1), 0)
    inner_lo = tl.max(tl.where(row_ok, k_lo, 0), 0)
    inner_hi = tl.min(tl.where(row_ok, k_hi, BIG), 0)
    n_start = tl.minimum(first, last + 1) // BLOCK_N
    n_end = tl.maximum(tl.cdiv(last + 1, BLOCK_N), n_start)
    split_start = split * pages_per_split  # this split's pages: [split_start, split_start + pages_per_split)
    n_start = tl.minimum(tl.maximum(n_start, split_start), split_start + pages_per_split)
    n_end = tl.minimum(tl.maximum(n_end, n_start), split_start + pages_per_split)
    unmasked_start = tl.minimum(tl.maximum(tl.cdiv(inner_lo, BLOCK_N), n_start), n_end)
    unmasked_end = tl.minimum(tl.maximum((inner_hi + 1) // BLOCK_N, unmasked_start), n_end)

    k_head = KeyPages + off_kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_head = ValuePages + off_kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    table = BlockTable + off_b * stride_tb
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running sum of exp2(score - m_i) * v
    for phase in tl.static_range(3):  # 0: masked (cut from below), 1: unmasked, 2: masked
        if phase == 0:
            lo, hi = n_start, unmasked_start
        elif phase == 1:
            lo, hi = unmasked_start, unmasked_end
        else:
            lo, hi = unmasked_end, n_end
        if phase != 0 or WINDOW:  # without a window every row's interval starts at key 0
            for n in range(lo, hi):
                page = tl.load(table + n * stride_tn).to(tl.int64)  # logical block n -> physical page
                cols = n * BLOCK_N + offs_n  # (BLOCK_N,) the keys' positions
                if phase != 1:  # masked: slots past the row's length may be unwritten
                    kv_mask = (cols < kv_len)[:, None] & d_ok[None, :]  # (BLOCK_N, BLOCK_D)
                else:
                    kv_mask = (offs_n < BLOCK_N)[:, None] & d_ok[None, :]
                k = tl.load(k_head + page * stride_kp, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                attn_scores, _ = attn_scores_base2(qk, query_pos, cols, sm_scale, softcap, 0.0, SOFTCAP, False)
                if ALIBI:  # each row has its own head, so its own slope
                    distance = tl.abs(query_pos[:, None] - cols[None, :]).to(tl.float32)  # (BLOCK_M, BLOCK_N)
                    attn_scores = attn_scores - (alibi_slope[:, None] * LOG2E) * distance
                if phase != 1:  # masked
                    visible = (cols[None, :] >= k_lo[:, None]) & (cols[None, :] <= k_hi[:, None])
                    attn_scores = tl.where(visible, attn_scores, float("-inf"))  # (BLOCK_M, BLOCK_N)
                m_new = tl.maximum(m_i, tl.max(attn_scores, 1))  # (BLOCK_M,)
                if phase != 1:  # rows with nothing visible yet: subtract 0 so exp2(-inf - 0) = 0, not NaN
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                else:
                    m_safe = m_new
                probs = tl.math.exp2(attn_scores - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
                alpha = tl.math.exp2(m_i - m_safe)  # (BLOCK_M,) rescales what was summed under the old max
                l_i = l_i * alpha + tl.sum(probs, 1)
                v = tl.load(v_head + page * stride_vp, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
                acc = tl.dot(probs.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
                m_i = m_new

    has_key = l_i > 0.0  # (BLOCK_M,) False only for rows that see no key (in this split)
    l_safe = tl.where(has_key, l_i, 1.0)
    if SPLIT:  # flash-decoding: this split's output, normalised by its own sum, and its natural lse
        partial_out = acc / l_safe[:, None]  # (BLOCK_M, BLOCK_D), zeros where no key
        partial_lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # (BLOCK_M,)
        base = off_bkv * num_splits + split  # PartialOut (b*h_kv, S, R, d), PartialLse (b*h_kv, S, R), contiguous
        o_ptrs = PartialOut + (base * num_rows + rows[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, partial_out, mask=row_ok[:, None] & d_ok[None, :])
        tl.store(PartialLse + base * num_rows + rows, partial_lse, mask=row_ok)
    else:
        denominator = l_safe
        if SINKS:  # the sink's logit joins the denominator and adds no value (m_i is finite where has_key)
            sink = tl.load(Sinks + head, mask=row_ok, other=0.0).to(tl.float32) * LOG2E
            denominator = tl.where(has_key, l_i + tl.math.exp2(sink - m_i), 1.0)
        out = acc / denominator[:, None]  # (BLOCK_M, BLOCK_D), zeros where no key
        out_ptrs = (
            Out + off_b * stride_ob + head[:, None] * stride_oh + query[:, None] * stride_om
            + offs_d[None, :] * stride_od
        )  # fmt: skip
        tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # (BLOCK_M,) natural log
        tl.store(Lse + (off_b * h_kv * GROUP + head) * t_q + query, lse, mask=row_ok)
