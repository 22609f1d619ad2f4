"""Scores of a tile from its dot products, shared by the FlashAttention kernels: scale, softcap, ALiBi.

In the spec's order (:mod:`attnlab.backends.spec`): ``s = scale * q.k``, then Gemma 2's softcap
``s = c * tanh(s / c)``, then ALiBi ``s -= slope * |p_i - j|``. The kernels keep scores in base 2 (``exp2``
is the hardware's instruction), so the result is ``s * log2(e)``; the log-sum-exp they store is natural.
``SOFTCAP`` and ``ALIBI`` are compile-time flags: without them this is the single multiply it always was.

Triton has no ``tanh`` that runs both compiled and in the CPU interpreter (libdevice's is CUDA-only), so
:func:`tanh` is written out: within 2 float32 ulps of the exact value with exact ``exp2`` and division (as
in the interpreter; on the GPU their fast approximations add a few ulps), close to ``torch.tanh``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E", "attn_scores_base2", "tanh"]

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def tanh(x):
    """float32 ``tanh(x)`` from ``exp2`` alone.

    Near zero ``1 - 2 / (e^{2|x|} + 1)`` cancels (its error is absolute, not relative), so below
    ``|x| = 0.4`` the odd Taylor series to ``x^11`` takes over (its first dropped term is under 2**-24 of tanh there).
    """
    abs_x = tl.abs(x)
    # Past |x| = 9, tanh(x) is within a float32 ulp of +-1; clamping there keeps e^{2|x|} finite.
    far = 1.0 - 2.0 / (tl.math.exp2(tl.minimum(abs_x, 9.0) * (2.0 * LOG2E)) + 1.0)
    far = tl.where(x < 0.0, -far, far)
    x2 = x * x
    near = -1382.0 / 155925.0
    near = near * x2 + 62.0 / 2835.0
    near = near * x2 - 17.0 / 315.0
    near = near * x2 + 2.0 / 15.0
    near = near * x2 - 1.0 / 3.0
    near = x + x * x2 * near
    return tl.where(abs_x < 0.4, near, far)


@triton.jit
def attn_scores_base2(
    qk, pos_0, pos_1, sm_scale, softcap, alibi_slope,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
):  # fmt: skip
    """A tile's scores in base 2 from its float32 dot products ``qk``; returns ``(attn_scores, capped)``.

    ``pos_0`` and ``pos_1`` are the positions along the tile's two axes (query positions and keys, in either
    order: ALiBi needs only their distance). ``capped = tanh(scale * qk / softcap)``, whose ``1 - capped**2``
    is the softcap's gradient in the backward (without a softcap it is ``qk``, unused).
    """
    if SOFTCAP:
        capped = tanh(qk * (sm_scale / softcap))
        attn_scores = capped * (softcap * LOG2E)
    else:
        capped = qk
        attn_scores = qk * (sm_scale * LOG2E)
    if ALIBI:
        distance = tl.abs(pos_0[:, None] - pos_1[None, :]).to(tl.float32)  # (tile rows, tile columns)
        attn_scores = attn_scores - (alibi_slope * LOG2E) * distance
    return attn_scores, capped
