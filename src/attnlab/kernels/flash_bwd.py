"""FlashAttention-2 backward kernels: probabilities recomputed from q, k and the saved log-sum-exp.

With ``P = exp(scale * q k^T - lse)`` and ``delta_i = dO_i · O_i``, the gradients are
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - delta)``, ``dQ = scale * dS K``, ``dK = scale * dS^T Q``.

Two kernels, so that every gradient block is owned by one program and the result is deterministic
(no atomics):

- :func:`flash_bwd_dq_kernel`, one program per query block: computes and stores ``delta`` for its rows,
  then walks the key blocks exactly as the forward does (unmasked phase, then masked phase) for ``dq``;
- :func:`flash_bwd_dkdv_kernel`, one program per key block, launched after it (it reads ``delta``):
  walks the query blocks that see its keys, first those crossing the diagonal (masked), then the
  rest (unmasked), for ``dk`` and ``dv``.

Padded query rows read ``lse = +inf``, so their probabilities are exactly zero and need no mask.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import key_range, load_tile, program_block, store_tile

__all__ = ["flash_bwd_dkdv_kernel", "flash_bwd_dq_kernel"]

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def flash_bwd_dq_kernel(
    Q, K, V, Out, DO, DQ, Lse, Delta,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    num_heads, t_q, t_k, sm_scale,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    off_b, off_h, start_m = program_block(num_heads, BLOCK_M, CAUSAL)
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    rows = offs_m[:, None]  # (BLOCK_M, 1)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + rows * stride_qm + offs_d[None, :] * stride_qd
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + rows * stride_om + offs_d[None, :] * stride_od
    do_ptrs = DO + off_b * stride_dob + off_h * stride_doh + rows * stride_dom + offs_d[None, :] * stride_dod
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[None, :] * stride_kd  # (1, BLOCK_D)
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd  # (1, BLOCK_D)
    row_ptrs = (off_b * num_heads + off_h) * t_q + offs_m  # (BLOCK_M,) into the (b*h, t_q) Lse and Delta

    q = load_tile(q_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    do = load_tile(do_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    o = load_tile(o_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,) = rowsum(P * dP)
    tl.store(Delta + row_ptrs, delta, mask=offs_m < t_q)
    lse2 = tl.load(Lse + row_ptrs, mask=offs_m < t_q, other=float("inf")) * LOG2E  # (BLOCK_M,) base 2
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)

    offset = t_k - t_q  # query i sees keys j <= i + offset
    k_full, k_end = key_range(start_m, t_q, t_k, CAUSAL, BLOCK_M, BLOCK_N)  # the forward's two phases

    for phase in tl.static_range(2):
        if phase == 0:
            lo, hi = 0, k_full
        else:
            lo, hi = k_full, k_end
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n  # (BLOCK_N,)
            k = load_tile(k_base + cols[:, None] * stride_kn, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase == 1)
            v = load_tile(v_base + cols[:, None] * stride_vn, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase == 1)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
            p = tl.math.exp2(qk * qk_scale - lse2[:, None])  # (BLOCK_M, BLOCK_N)
            if phase == 1:
                visible = cols[None, :] < t_k
                if CAUSAL:
                    visible = visible & (cols[None, :] <= offs_m[:, None] + offset)
                p = tl.where(visible, p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
            ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N)
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)

    dq_ptrs = DQ + off_b * stride_dqb + off_h * stride_dqh + rows * stride_dqm + offs_d[None, :] * stride_dqd
    store_tile(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def flash_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_heads, t_q, t_k, sm_scale,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # Causal: the first key blocks are seen by the most queries, so the natural order is heaviest first.
    off_b, off_h, start_n = program_block(num_heads, BLOCK_N, False)
    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) this program's keys
    offs_m = tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows within a block
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    cols = offs_n[:, None]  # (BLOCK_N, 1)
    k = load_tile(
        K + off_b * stride_kb + off_h * stride_kh + cols * stride_kn + offs_d[None, :] * stride_kd,
        offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D, True,
    )  # (BLOCK_N, BLOCK_D)  # fmt: skip
    v = load_tile(
        V + off_b * stride_vb + off_h * stride_vh + cols * stride_vn + offs_d[None, :] * stride_vd,
        offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D, True,
    )  # (BLOCK_N, BLOCK_D)  # fmt: skip
    q_base = Q + off_b * stride_qb + off_h * stride_qh + offs_d[None, :] * stride_qd  # (1, BLOCK_D)
    do_base = DO + off_b * stride_dob + off_h * stride_doh + offs_d[None, :] * stride_dod  # (1, BLOCK_D)
    row_base = (off_b * num_heads + off_h) * t_q
    qk_scale = sm_scale * LOG2E
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)

    offset = t_k - t_q  # query i sees key j iff i >= j - offset
    if CAUSAL:
        m_start = tl.maximum(start_n - offset, 0)  # first row that sees any key of this block
        # Rows from start_n + BLOCK_N - 1 - offset on see every key of the block: no mask needed there.
        num_masked = tl.maximum(tl.minimum(start_n + BLOCK_N - 1 - offset, t_q) - m_start, 0)
        m_full = m_start + tl.cdiv(num_masked, BLOCK_M) * BLOCK_M
    else:
        m_start = 0
        m_full = 0

    for phase in tl.static_range(2):
        if phase == 0:
            lo, hi = m_start, m_full
        else:
            lo, hi = m_full, t_q
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m  # (BLOCK_M,)
            q = load_tile(q_base + rows[:, None] * stride_qm, rows, t_q, offs_d, HEAD_DIM, BLOCK_D, True)
            do = load_tile(do_base + rows[:, None] * stride_dom, rows, t_q, offs_d, HEAD_DIM, BLOCK_D, True)
            lse2 = tl.load(Lse + row_base + rows, mask=rows < t_q, other=float("inf")) * LOG2E  # (BLOCK_M,)
            delta = tl.load(Delta + row_base + rows, mask=rows < t_q, other=0.0)  # (BLOCK_M,)
            qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
            p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])  # (BLOCK_N, BLOCK_M) = P^T
            if phase == 0:
                p_t = tl.where(offs_n[:, None] <= rows[None, :] + offset, p_t, 0.0)
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
            ds_t = p_t * (dp_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)

    dk_ptrs = DK + off_b * stride_dkb + off_h * stride_dkh + cols * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + off_b * stride_dvb + off_h * stride_dvh + cols * stride_dvn + offs_d[None, :] * stride_dvd
    store_tile(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D)
    store_tile(dv_ptrs, dv.to(DV.dtype.element_ty), offs_n, t_k, offs_d, HEAD_DIM, BLOCK_D)
