"""FlashAttention-2 backward kernels: probabilities recomputed from q, k and the saved log-sum-exp.

With ``probs = exp(attn_scores - lse)`` and ``delta_i = dO_i · O_i``, the gradients are
``dV = probs^T dO``, ``dprobs = dO V^T``, ``dscores = probs * (dprobs - delta)``, ``dQ = scale * dscores' K``,
``dK = scale * dscores'^T Q``, where ``dscores'`` is ``dscores`` times the softcap's gradient
``1 - tanh^2`` (ALiBi's bias adds nothing). ``lse`` here is the softmax's whole normaliser: with sinks the
launcher has folded the sink into it, so a sink needs nothing in these kernels.

Two passes, so that every gradient block is owned by one program and the result is deterministic
(no atomics):

- the ``dq`` pass, :func:`flash_bwd_dq_kernel`, one program per query block: computes and stores
  ``delta`` for its rows, then walks the key blocks exactly as the forward does (its ``masked`` and
  ``unmasked`` phases, from the rows' key intervals) for ``dq``;
- the ``dkdv`` pass, :func:`flash_bwd_dkdv_kernel`, one program per key block of a key/value head,
  launched after it (it reads ``delta``): for each query head of the head's GQA group, walks the query
  blocks that see its keys (:func:`.tiles.query_bounds`, the same intervals transposed), accumulating
  ``dk`` and ``dv`` over the whole group.

Padded query rows read ``lse = +inf``, so their probabilities are exactly zero and need no mask. With
``KV_LENS`` each program first loads its batch row's number of keys, which plays ``t_k``'s part from there on;
the dkdv pass skips key blocks at or past it (the launcher zeroes dk and dv, and only keys before it are stored).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scores import LOG2E, attn_scores_base2
from .tiles import key_bounds, load_tile, loop_phases, program_block, query_bounds, store_tile, tile_ptrs

__all__ = ["flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel"]


@triton.jit
def flash_bwd_dq_kernel(
    Q, K, V, Out, DO, DQ, Lse, Delta, DeltaShift, AlibiSlopes, SeqStart, SeqEnd, KvLens,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    num_heads, t_q, t_k, sm_scale, softcap, window,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    PACKED: tl.constexpr,
    KV_LENS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    LSE_GRAD: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    off_b, off_h, start_m = program_block(num_heads, BLOCK_M, CAUSAL)
    if KV_LENS:  # per-row key lengths: from here on t_k is this batch row's number of keys
        t_k = tl.load(KvLens + off_b).to(tl.int32)
    off_kv = off_h // GROUP  # GQA: the key/value head of this query head
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_head = Q + off_b * stride_qb + off_h * stride_qh  # row 0 of this query head (int64 offsets)
    o_head = Out + off_b * stride_ob + off_h * stride_oh
    do_head = DO + off_b * stride_dob + off_h * stride_doh
    k_head = K + off_b * stride_kb + off_kv * stride_kh  # row 0 of its key head
    v_head = V + off_b * stride_vb + off_kv * stride_vh
    q_ptrs = tile_ptrs(q_head, start_m, BLOCK_M, stride_qm, offs_d, stride_qd, INT64_ROWS)  # (BLOCK_M, BLOCK_D)
    o_ptrs = tile_ptrs(o_head, start_m, BLOCK_M, stride_om, offs_d, stride_od, INT64_ROWS)
    do_ptrs = tile_ptrs(do_head, start_m, BLOCK_M, stride_dom, offs_d, stride_dod, INT64_ROWS)
    row_ptrs = (off_b * num_heads + off_h) * t_q + offs_m  # (BLOCK_M,) into the (b*h, t_q) Lse and Delta

    q = load_tile(q_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    do = load_tile(do_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    o = load_tile(o_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,) = rowsum(probs * dprobs)
    if LSE_GRAD:  # a gradient on the returned lse adds dlse_i * d(lse_i)/d(score): folded into delta
        delta = delta - tl.load(DeltaShift + row_ptrs, mask=offs_m < t_q, other=0.0)
    tl.store(Delta + row_ptrs, delta, mask=offs_m < t_q)
    lse2 = tl.load(Lse + row_ptrs, mask=offs_m < t_q, other=float("inf")) * LOG2E  # (BLOCK_M,) base 2
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    alibi_slope = tl.load(AlibiSlopes + off_h).to(tl.float32) if ALIBI else 0.0
    query_pos = offs_m + (t_k - t_q)  # (BLOCK_M,)

    # The forward's key intervals and phases (see flash_fwd).
    k_lo, k_hi = key_bounds(offs_m, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)  # (BLOCK_M,)
    first_lo, first_hi = key_bounds(start_m, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    last_row = tl.minimum(start_m + BLOCK_M, t_q) - 1
    last_lo, last_hi = key_bounds(last_row, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    k_start, unmasked_start, unmasked_end, k_end = loop_phases(
        first_lo, last_lo, first_hi, last_hi, t_k, BLOCK_N, False
    )
    HAS_LO: tl.constexpr = WINDOW or PACKED

    for phase in tl.static_range(3):  # 0: masked (cut from below), 1: unmasked, 2: masked
        if phase == 0:
            lo, hi = k_start, unmasked_start
        elif phase == 1:
            lo, hi = unmasked_start, unmasked_end
        else:
            lo, hi = unmasked_end, k_end
        if phase != 0 or HAS_LO:
            for start_n in range(lo, hi, BLOCK_N):
                cols = start_n + offs_n  # (BLOCK_N,)
                k_ptrs = tile_ptrs(k_head, start_n, BLOCK_N, stride_kn, offs_d, stride_kd, INT64_ROWS)
                v_ptrs = tile_ptrs(v_head, start_n, BLOCK_N, stride_vn, offs_d, stride_vd, INT64_ROWS)
                k = load_tile(k_ptrs, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase != 1)  # (BLOCK_N, BLOCK_D)
                v = load_tile(v_ptrs, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase != 1)  # (BLOCK_N, BLOCK_D)
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                attn_scores, capped = attn_scores_base2(
                    qk, query_pos, cols, sm_scale, softcap, alibi_slope, SOFTCAP, ALIBI
                )  # (BLOCK_M, BLOCK_N)
                probs = tl.math.exp2(attn_scores - lse2[:, None])  # (BLOCK_M, BLOCK_N)
                if phase != 1:  # masked
                    visible = cols[None, :] <= k_hi[:, None]  # (BLOCK_M, BLOCK_N)
                    if HAS_LO:
                        visible = visible & (cols[None, :] >= k_lo[:, None])
                    probs = tl.where(visible, probs, 0.0)
                dprobs = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                dscores = probs * (dprobs - delta[:, None])  # (BLOCK_M, BLOCK_N)
                if SOFTCAP:
                    dscores = dscores * (1.0 - capped * capped)
                dq = tl.dot(dscores.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)

    dq_head = DQ + off_b * stride_dqb + off_h * stride_dqh
    dq_ptrs = tile_ptrs(dq_head, start_m, BLOCK_M, stride_dqm, offs_d, stride_dqd, INT64_ROWS)
    store_tile(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _dkdv_block(
    dk, dv, k, v, q_lo, q_hi, offs_n, start_m, q_head, do_head, lse_head, delta_head, alibi_slope,
    stride_qm, stride_qd, stride_dom, stride_dod, t_q, t_k, sm_scale, softcap,
    MASKED: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, INT64_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One step of the dkdv pass: query rows ``start_m ..`` of one query head against this program's keys.

    ``q_head``, ``do_head``, ``lse_head``, ``delta_head`` point at row 0 of that head; returns the updated
    ``(dk, dv)``. ``MASKED``: zero the probabilities of the queries outside each key's ``[q_lo, q_hi]``.
    """
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = start_m + offs_m  # (BLOCK_M,)
    q_ptrs = tile_ptrs(q_head, start_m, BLOCK_M, stride_qm, offs_d, stride_qd, INT64_ROWS)
    do_ptrs = tile_ptrs(do_head, start_m, BLOCK_M, stride_dom, offs_d, stride_dod, INT64_ROWS)
    q = load_tile(q_ptrs, rows, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    do = load_tile(do_ptrs, rows, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    lse2 = tl.load(lse_head + rows, mask=rows < t_q, other=float("inf")) * LOG2E  # (BLOCK_M,)
    delta = tl.load(delta_head + rows, mask=rows < t_q, other=0.0)  # (BLOCK_M,)
    qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
    attn_scores_t, capped_t = attn_scores_base2(
        qk_t, offs_n, rows + (t_k - t_q), sm_scale, softcap, alibi_slope, SOFTCAP, ALIBI
    )  # (BLOCK_N, BLOCK_M)
    probs_t = tl.math.exp2(attn_scores_t - lse2[None, :])  # (BLOCK_N, BLOCK_M) = probs^T
    if MASKED:
        if HAS_LO:
            visible = rows[None, :] >= q_lo[:, None]  # (BLOCK_N, BLOCK_M)
            if HAS_HI:
                visible = visible & (rows[None, :] <= q_hi[:, None])
        else:
            visible = rows[None, :] <= q_hi[:, None]  # (BLOCK_N, BLOCK_M)
        probs_t = tl.where(visible, probs_t, 0.0)
    dv = tl.dot(probs_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
    dprobs_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
    dscores_t = probs_t * (dprobs_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
    if SOFTCAP:
        dscores_t = dscores_t * (1.0 - capped_t * capped_t)
    dk = tl.dot(dscores_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
    return dk, dv


@triton.jit
def flash_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta, AlibiSlopes, SeqStart, SeqEnd, KvLens,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_kv_heads, t_q, t_k, sm_scale, softcap, window,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    PACKED: tl.constexpr,
    KV_LENS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # Causal: the first key blocks are seen by the most queries, so the natural order is heaviest first.
    off_b, off_kv, start_n = program_block(num_kv_heads, BLOCK_N, False)
    if KV_LENS:  # per-row key lengths: from here on t_k is this batch row's number of keys
        t_k = tl.load(KvLens + off_b).to(tl.int32)
    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) this program's keys
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    k_head = K + off_b * stride_kb + off_kv * stride_kh  # row 0 of this key head (int64 offsets)
    v_head = V + off_b * stride_vb + off_kv * stride_vh
    k_ptrs = tile_ptrs(k_head, start_n, BLOCK_N, stride_kn, offs_d, stride_kd, INT64_ROWS)  # (BLOCK_N, BLOCK_D)
    v_ptrs = tile_ptrs(v_head, start_n, BLOCK_N, stride_vn, offs_d, stride_vd, INT64_ROWS)
    k = load_tile(k_ptrs, offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_N, BLOCK_D)
    v = load_tile(v_ptrs, offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_N, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)

    # Key j is seen by the queries q_lo[j] <= i <= q_hi[j]; the first and last keys bound the block's queries.
    q_lo, q_hi = query_bounds(offs_n, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)  # (BLOCK_N,)
    first_lo, first_hi = query_bounds(start_n, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    last_col = tl.minimum(start_n + BLOCK_N, t_k) - 1
    last_lo, last_hi = query_bounds(last_col, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    m_start, unmasked_start, unmasked_end, m_end = loop_phases(first_lo, last_lo, first_hi, last_hi, t_q, BLOCK_M, True)
    if KV_LENS:  # a key block at or past this row's length: no query sees it, no step runs (dk, dv stay zero)
        past = start_n >= t_k
        unmasked_start = tl.where(past, m_start, unmasked_start)
        unmasked_end = tl.where(past, m_start, unmasked_end)
        m_end = tl.where(past, m_start, m_end)
    HAS_LO: tl.constexpr = CAUSAL or PACKED  # queries before a key's first viewer exist
    HAS_HI: tl.constexpr = WINDOW or PACKED  # queries after its last viewer exist (padding is free)

    num_heads = num_kv_heads * GROUP
    for phase in tl.static_range(3):  # 0: masked (cut from below), 1: unmasked, 2: masked
        if phase == 0:
            lo, hi = m_start, unmasked_start
        elif phase == 1:
            lo, hi = unmasked_start, unmasked_end
        else:
            lo, hi = unmasked_end, m_end
        if (phase == 0 and HAS_LO) or phase == 1 or (phase == 2 and HAS_HI):
            if GROUP == 1:  # one query head per key/value head
                q_head = Q + off_b * stride_qb + off_kv * stride_qh  # row 0 of the query head
                do_head = DO + off_b * stride_dob + off_kv * stride_doh
                row_base = (off_b * num_heads + off_kv) * t_q  # into the (b*h, t_q) Lse and Delta
                alibi_slope = tl.load(AlibiSlopes + off_kv).to(tl.float32) if ALIBI else 0.0
                for start_m in range(lo, hi, BLOCK_M):
                    dk, dv = _dkdv_block(
                        dk, dv, k, v, q_lo, q_hi, offs_n, start_m, q_head, do_head, Lse + row_base,
                        Delta + row_base, alibi_slope, stride_qm, stride_qd, stride_dom, stride_dod,
                        t_q, t_k, sm_scale, softcap,
                        phase != 1, HAS_LO, HAS_HI, SOFTCAP, ALIBI, INT64_ROWS,
                        HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION,
                    )  # fmt: skip
            else:
                # GQA: each query block is visited once per query head of the group, every visit adding to
                # dk and dv. One flat loop over (block, head) pairs rather than a loop over heads around the
                # loop over blocks: the nested loops would hold both loops' state in registers (and spill).
                for step in range(0, tl.cdiv(hi - lo, BLOCK_M) * GROUP):
                    start_m = lo + (step // GROUP) * BLOCK_M
                    off_h = off_kv * GROUP + step % GROUP  # the query head of this step
                    q_head = Q + off_b * stride_qb + off_h * stride_qh
                    do_head = DO + off_b * stride_dob + off_h * stride_doh
                    row_base = (off_b * num_heads + off_h) * t_q
                    alibi_slope = tl.load(AlibiSlopes + off_h).to(tl.float32) if ALIBI else 0.0
                    dk, dv = _dkdv_block(
                        dk, dv, k, v, q_lo, q_hi, offs_n, start_m, q_head, do_head, Lse + row_base,
                        Delta + row_base, alibi_slope, stride_qm, stride_qd, stride_dom, stride_dod,
                        t_q, t_k, sm_scale, softcap,
                        phase != 1, HAS_LO, HAS_HI, SOFTCAP, ALIBI, INT64_ROWS,
                        HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION,
                    )  # fmt: skip

    dk_head = DK + off_b * stride_dkb + off_kv * stride_dkh
    dv_head = DV + off_b * stride_dvb + off_kv * stride_dvh
    dk_ptrs = tile_ptrs(dk_head, start_n, BLOCK_N, stride_dkn, offs_d, stride_dkd, INT64_ROWS)
    dv_ptrs = tile_ptrs(dv_head, start_n, BLOCK_N, stride_dvn, offs_d, stride_dvd, INT64_ROWS)
    store_tile(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D)
    store_tile(dv_ptrs, dv.to(DV.dtype.element_ty), offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D)
