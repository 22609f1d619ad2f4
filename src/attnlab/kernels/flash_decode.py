"""Split-KV decoding ("flash-decoding") kernels: the splits, then the reduction that merges them on the lse.

The algorithm and names of :mod:`attnlab.backends.flash_decode_torch`, one program per piece of work:

- :func:`flash_decode_split_kernel`, grid ``(b * h_kv, num_splits, row blocks)``: one key/value head, one
  chunk of its keys. The rows of its tile are the packed queries of the head's whole group (row
  ``g * t_q + i``: query ``i`` of the group's head ``g``), so each key/value tile is loaded once for all of
  them. It streams its chunk's key blocks with the online softmax (``m_i``, ``l_i``, ``acc``; scores in base 2,
  :mod:`.scores`) and writes a partial output, normalised by its own sum, and its natural log-sum-exp
  (``-inf`` where the chunk holds no key a row sees).
- :func:`flash_decode_reduce_kernel`, grid ``(b * h_kv * rows,)``: one packed row; merges its splits,
  ``lse = log sum_s e^{lse_s}``, ``out = sum_s e^{lse_s - lse} o_s``, joins the sink to the denominator
  (``sigmoid(lse - sink)``), writes the output in the input dtype and the lse (``-inf`` without keys).

Which keys a split reads (the union of the rows' intervals cut into chunks of whole ``BLOCK_N`` blocks) is
decided on the host by :func:`attnlab.backends.flash_decode_torch.split_plan`; in the kernel, every key block
is masked by each row's interval (:func:`.tiles.key_bounds`) and the chunk's end: a decoding tile has a few
rows, and the mask is a handful of comparisons per key next to the loads. With ``KV_LENS`` (flash-decoding's
``cache_seqlens``) a program first loads its batch row's number of keys, which plays ``t_k``'s part from there
on, and ends its chunk there: a split that starts at or past it runs no step and writes ``lse = -inf``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scores import LOG2E, attn_scores_base2
from .tiles import key_bounds

__all__ = ["flash_decode_reduce_kernel", "flash_decode_split_kernel"]

LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def flash_decode_split_kernel(
    Q, K, V, PartialOut, PartialLse, AlibiSlopes, KvLens,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    h_kv, t_q, t_k, num_rows, num_splits, key_start, key_end, chunk, sm_scale, softcap, window,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    KV_LENS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    off_bkv = tl.program_id(0).to(tl.int64)  # (batch, key/value head)
    split = tl.program_id(1)
    off_b, off_kv = off_bkv // h_kv, off_bkv % h_kv
    if KV_LENS:  # per-row key lengths: from here on t_k is this batch row's number of keys
        t_k = tl.load(KvLens + off_b).to(tl.int32)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) packed rows g * t_q + i
    row_ok = rows < num_rows
    query = rows % t_q  # (BLOCK_M,) the row's query i
    head = off_kv * GROUP + rows // t_q  # (BLOCK_M,) the row's query head
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = (
        Q + off_b * stride_qb + head[:, None] * stride_qh + query[:, None] * stride_qm + offs_d[None, :] * stride_qd
    )
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    k_head = K + off_b * stride_kb + off_kv * stride_kh
    v_head = V + off_b * stride_vb + off_kv * stride_vh
    k_lo, k_hi = key_bounds(query, t_q, t_k, window, None, None, CAUSAL, WINDOW, False)  # (BLOCK_M,)
    k_hi = tl.where(row_ok, k_hi, -1)  # padding rows see nothing
    query_pos = query + (t_k - t_q)  # (BLOCK_M,) ALiBi's positions
    alibi_slope = tl.load(AlibiSlopes + head, mask=row_ok, other=0.0).to(tl.float32) if ALIBI else 0.0

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running sum of exp2(score - m_i) * v
    split_start = key_start + split * chunk
    split_end = tl.minimum(split_start + chunk, key_end)
    if KV_LENS:  # no key at or past the row's length (a split past it runs no step)
        split_end = tl.minimum(split_end, t_k)
    for start_n in range(split_start, split_end, BLOCK_N):
        cols = start_n + offs_n  # (BLOCK_N,)
        col_ok = cols < split_end
        kv_mask = col_ok[:, None] & d_ok[None, :]  # (BLOCK_N, BLOCK_D)
        k = tl.load(
            k_head + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0
        )
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        attn_scores, _ = attn_scores_base2(qk, query_pos, cols, sm_scale, softcap, 0.0, SOFTCAP, False)
        if ALIBI:  # each row has its own head, so its own slope (attn_scores_base2 takes one per tile)
            distance = tl.abs(query_pos[:, None] - cols[None, :]).to(tl.float32)  # (BLOCK_M, BLOCK_N)
            attn_scores = attn_scores - (alibi_slope[:, None] * LOG2E) * distance
        visible = (cols[None, :] >= k_lo[:, None]) & (cols[None, :] <= k_hi[:, None]) & col_ok[None, :]
        attn_scores = tl.where(visible, attn_scores, float("-inf"))  # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(attn_scores, 1))  # (BLOCK_M,)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet: exp2(-inf) = 0
        probs = tl.math.exp2(attn_scores - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_safe)  # (BLOCK_M,)
        l_i = l_i * alpha + tl.sum(probs, 1)
        v = tl.load(
            v_head + cols[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0
        )
        acc = tl.dot(probs.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    has_key = l_i > 0.0  # (BLOCK_M,)
    l_safe = tl.where(has_key, l_i, 1.0)
    partial_out = acc / l_safe[:, None]  # (BLOCK_M, BLOCK_D), zeros where no key
    partial_lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # natural log
    base = off_bkv * num_splits + split  # PartialOut (b*h_kv, S, R, d), PartialLse (b*h_kv, S, R), contiguous
    o_ptrs = PartialOut + (base * num_rows + rows[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, partial_out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(PartialLse + base * num_rows + rows, partial_lse, mask=row_ok)


@triton.jit
def flash_decode_reduce_kernel(
    PartialOut, PartialLse, Out, Lse, Sinks,
    stride_ob, stride_oh, stride_om, stride_od,
    h_kv, t_q, num_rows, num_splits,
    SINKS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    program = tl.program_id(0).to(tl.int64)  # one packed row of one key/value head
    off_bkv, row = program // num_rows, program % num_rows
    off_b, off_kv = off_bkv // h_kv, off_bkv % h_kv
    query, head = row % t_q, off_kv * GROUP + row // t_q
    offs_s = tl.arange(0, BLOCK_S)  # (BLOCK_S,) splits
    offs_d = tl.arange(0, BLOCK_D)
    s_ok, d_ok = offs_s < num_splits, offs_d < HEAD_DIM
    entries = off_bkv * num_splits + offs_s  # (BLOCK_S,)
    partial_lse = tl.load(PartialLse + entries * num_rows + row, mask=s_ok, other=float("-inf"))  # (BLOCK_S,)
    o_ptrs = PartialOut + (entries[:, None] * num_rows + row) * HEAD_DIM + offs_d[None, :]
    partial_out = tl.load(o_ptrs, mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_S, BLOCK_D)

    lse_max = tl.max(partial_lse, 0)
    lse_max_safe = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # exp(-inf - 0) = 0, not NaN
    weights = tl.math.exp2((partial_lse - lse_max_safe) * LOG2E)  # (BLOCK_S,)
    total = tl.sum(weights, 0)
    has_key = total > 0.0
    out = tl.sum(weights[:, None] * partial_out, 0) / tl.where(has_key, total, 1.0)  # (BLOCK_D,)
    lse = tl.where(has_key, lse_max_safe + tl.math.log2(tl.where(has_key, total, 1.0)) * LN2, float("-inf"))
    if SINKS:  # Z / (Z + e^sink) = sigmoid(lse - sink); rows without keys stay zero
        sink = tl.load(Sinks + head).to(tl.float32)
        out = out * tl.where(has_key, 1.0 / (1.0 + tl.math.exp2((sink - lse) * LOG2E)), 0.0)
    out_ptrs = Out + off_b * stride_ob + head * stride_oh + query * stride_om + offs_d * stride_od
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=d_ok)
    tl.store(Lse + (off_b * h_kv * GROUP + head) * t_q + query, lse)
