"""FlashAttention-2 forward kernel: one program per (query block, batch x head).

The program keeps its ``BLOCK_M`` query rows in registers and streams key/value blocks past them with
the online softmax of :mod:`attnlab.backends.flash_torch` (same names: ``m_i``, ``l_i``, ``acc``). The
key blocks split into two phases, unrolled at compile time:

- phase 0, blocks every row of the program may fully see: no mask at all;
- phase 1, blocks crossing the causal diagonal or the ragged end of the keys: masked.

Blocks wholly in the causal future are never visited. Scores are kept in base 2 (``exp2`` is the
hardware's instruction), the softmax scale folded into ``qk_scale = scale * log2(e)``; the stored
log-sum-exp is converted back to natural log. Accumulation is float32; the probabilities are cast
to the input dtype only for the P·V product.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import key_range, load_tile, program_block, store_tile

__all__ = ["flash_fwd_kernel"]


@triton.jit
def flash_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, t_q, t_k, qk_scale,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    off_b, off_h, start_m = program_block(num_heads, BLOCK_M, CAUSAL)
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key columns within a block
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[None, :] * stride_kd  # (1, BLOCK_D)
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd  # (1, BLOCK_D)

    q = load_tile(q_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running sum of exp2(score - m_i) * v

    offset = t_k - t_q  # bottom-right causal alignment: query i sees keys j <= i + offset
    k_full, k_end = key_range(start_m, t_q, t_k, CAUSAL, BLOCK_M, BLOCK_N)

    for phase in tl.static_range(2):
        if phase == 0:
            lo, hi = 0, k_full
        else:
            lo, hi = k_full, k_end
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n  # (BLOCK_N,)
            k = load_tile(k_base + cols[:, None] * stride_kn, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase == 1)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            if phase == 1:
                visible = cols[None, :] < t_k  # (1, BLOCK_N)
                if CAUSAL:
                    visible = visible & (cols[None, :] <= offs_m[:, None] + offset)  # (BLOCK_M, BLOCK_N)
                qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))  # (BLOCK_M,)
            if phase == 1:
                # Rows with nothing visible yet keep m = -inf; subtract 0 so exp2(-inf - 0) = 0, not NaN.
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_safe = m_new
            p = tl.math.exp2(qk - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
            alpha = tl.math.exp2(m_i - m_safe)  # (BLOCK_M,) rescales what was summed under the old max
            l_i = l_i * alpha + tl.sum(p, 1)
            v = load_tile(v_base + cols[:, None] * stride_vn, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase == 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new

    has_key = l_i > 0.0  # False only for rows that see no key (causal, t_q > t_k)
    l_safe = tl.where(has_key, l_i, 1.0)  # (BLOCK_M,)
    out = acc / l_safe[:, None]  # (BLOCK_M, BLOCK_D), zeros where no key
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    store_tile(o_ptrs, out.to(Out.dtype.element_ty), offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D)
    # Natural-log lse; +inf for rows without keys, so the backward's exp(s - lse) is exactly 0 there.
    lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("inf"))  # (BLOCK_M,)
    tl.store(Lse + (off_b * num_heads + off_h) * t_q + offs_m, lse, mask=offs_m < t_q)
