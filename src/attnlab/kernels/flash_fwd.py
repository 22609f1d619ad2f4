"""FlashAttention-2 forward kernel: one program per (query block, batch x head).

The program keeps its ``BLOCK_M`` query rows in registers and streams key/value blocks past them with
the online softmax of :mod:`attnlab.backends.flash_torch` (same names: ``m_i``, ``l_i``, ``acc``,
``attn_scores``, ``probs``). Row ``i`` sees the keys ``k_lo[i] <= j <= k_hi[i]`` (:func:`.tiles.key_bounds`:
causal, window and packed sequences as one interval; with ``KV_LENS`` the program first loads its batch row's
number of keys, which then plays ``t_k``'s part everywhere), so the loop visits only the key blocks between the
first row's ``lo`` and the last row's ``hi`` (a window's work grows as ``t * window``, packed sequences' as
``sum t_i^2``) in two kinds of phase, unrolled at compile time (:func:`.tiles.loop_phases`):

- ``unmasked``: blocks inside every row's interval, no mask at all;
- ``masked``: blocks cut by some row's interval or by the ragged end of the keys; they come before the
  unmasked blocks (cut by a window's or a sequence's start; compiled only with ``WINDOW`` or ``PACKED``)
  and after them (cut by the causal diagonal, a sequence's end or the last key).

GQA: query head ``h`` reads key/value head ``h // GROUP``, nothing repeated. Scores are kept in base 2
(:mod:`.scores`: scale, softcap, ALiBi); the stored log-sum-exp is natural and covers the keys only. A sink
joins the denominator at the end. Accumulation is float32; the probabilities are cast to the input dtype
only for the P·V product.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scores import LOG2E, attn_scores_base2
from .tiles import key_bounds, load_tile, loop_phases, program_block, store_tile, tile_ptrs

__all__ = ["flash_fwd_kernel"]


@triton.jit
def flash_fwd_kernel(
    Q, K, V, Out, Lse, Sinks, AlibiSlopes, SeqStart, SeqEnd, KvLens,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, t_q, t_k, sm_scale, softcap, window,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
    PACKED: tl.constexpr,
    KV_LENS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr,
    SINKS: tl.constexpr,
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
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key columns within a block
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    q_head = Q + off_b * stride_qb + off_h * stride_qh  # row 0 of this query head (int64 offsets)
    k_head = K + off_b * stride_kb + off_kv * stride_kh  # row 0 of its key head
    v_head = V + off_b * stride_vb + off_kv * stride_vh
    q_ptrs = tile_ptrs(q_head, start_m, BLOCK_M, stride_qm, offs_d, stride_qd, INT64_ROWS)  # (BLOCK_M, BLOCK_D)

    q = load_tile(q_ptrs, offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the base-2 scores
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running sum of exp2(score - m_i) * v
    alibi_slope = tl.load(AlibiSlopes + off_h).to(tl.float32) if ALIBI else 0.0
    query_pos = offs_m + (t_k - t_q)  # (BLOCK_M,) positions, aligned bottom-right (ALiBi's distances)

    # Row i sees keys k_lo[i] <= j <= k_hi[i]; the first and last rows bound the whole block's keys.
    k_lo, k_hi = key_bounds(offs_m, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)  # (BLOCK_M,)
    first_lo, first_hi = key_bounds(start_m, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    last_row = tl.minimum(start_m + BLOCK_M, t_q) - 1
    last_lo, last_hi = key_bounds(last_row, t_q, t_k, window, SeqStart, SeqEnd, CAUSAL, WINDOW, PACKED)
    k_start, unmasked_start, unmasked_end, k_end = loop_phases(
        first_lo, last_lo, first_hi, last_hi, t_k, BLOCK_N, False
    )
    HAS_LO: tl.constexpr = WINDOW or PACKED  # without them every k_lo is 0: nothing is cut from below

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
                k = load_tile(k_ptrs, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase != 1)  # (BLOCK_N, BLOCK_D)
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                attn_scores, _ = attn_scores_base2(
                    qk, query_pos, cols, sm_scale, softcap, alibi_slope, SOFTCAP, ALIBI
                )  # (BLOCK_M, BLOCK_N)
                if phase != 1:  # masked
                    visible = cols[None, :] <= k_hi[:, None]  # (BLOCK_M, BLOCK_N)
                    if HAS_LO:
                        visible = visible & (cols[None, :] >= k_lo[:, None])
                    attn_scores = tl.where(visible, attn_scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(attn_scores, 1))  # (BLOCK_M,)
                if phase != 1:  # masked
                    # Rows with nothing visible yet keep m = -inf; subtract 0 so exp2(-inf - 0) = 0, not NaN.
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                else:
                    m_safe = m_new
                probs = tl.math.exp2(attn_scores - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
                alpha = tl.math.exp2(m_i - m_safe)  # (BLOCK_M,) rescales what was summed under the old max
                l_i = l_i * alpha + tl.sum(probs, 1)
                v_ptrs = tile_ptrs(v_head, start_n, BLOCK_N, stride_vn, offs_d, stride_vd, INT64_ROWS)
                v = load_tile(v_ptrs, cols, t_k, offs_d, HEAD_DIM, BLOCK_D, phase != 1)  # (BLOCK_N, BLOCK_D)
                acc = tl.dot(probs.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
                m_i = m_new

    has_key = l_i > 0.0  # False only for rows that see no key
    l_safe = tl.where(has_key, l_i, 1.0)  # (BLOCK_M,)
    denominator = l_safe
    if SINKS:  # the sink's logit joins the denominator and adds no value (m_i is finite where has_key)
        sink = tl.load(Sinks + off_h).to(tl.float32) * LOG2E
        denominator = tl.where(has_key, l_i + tl.math.exp2(sink - m_i), 1.0)
    out = acc / denominator[:, None]  # (BLOCK_M, BLOCK_D), zeros where no key
    o_head = Out + off_b * stride_ob + off_h * stride_oh
    o_ptrs = tile_ptrs(o_head, start_m, BLOCK_M, stride_om, offs_d, stride_od, INT64_ROWS)  # (BLOCK_M, BLOCK_D)
    store_tile(o_ptrs, out.to(Out.dtype.element_ty), offs_m, t_q, offs_d, HEAD_DIM, BLOCK_D)
    # Natural-log lse of the keys (no sink); +inf for rows without keys, so the backward's exp(s - lse) is 0.
    lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("inf"))  # (BLOCK_M,)
    tl.store(Lse + (off_b * num_heads + off_h) * t_q + offs_m, lse, mask=offs_m < t_q)
