"""One FLOP count for every attention implementation, so that GFLOP/s are comparable across rows.

Forward pass of causal multi-head self-attention with ``b`` sequences of ``t`` tokens, model width
``d`` (= d_in = d_out) and ``h`` heads of ``d / h`` features (a multiply-add counts as 2 FLOPs):

- projections: queries, keys, values and output, four ``(b*t, d) x (d, d)`` products: ``8 * b * t * d**2``;
- attention: each head's query ``i`` meets the ``i + 1`` keys it may see (causal), one dot product for
  its score and one weighted sum of values, ``2 * (d / h)`` FLOPs each; summed over queries and heads:
  ``4 * b * d * t * (t + 1) / 2 = 2 * b * d * t * (t + 1)``.

Variants change the count where they change the work: with ``h_kv`` key/value heads the key and value
projections are ``(d, h_kv * d / h)``, so projections cost ``2*b*t*d*(2*d + 2*d_kv)``; a sliding window of
``w`` keys and packed sequences count only the pairs that may meet (:func:`visible_pairs`: ``min(i + 1, w)``
keys for query ``i`` of each packed sequence). Softcapping and sinks are elementwise and add nothing.

Only the causal half is counted, for every implementation: a kernel that computes the full ``t x t``
score matrix and masks half of it away (naive, einsum, sdpa with a mask) does twice the attention
work for the same result, and shows it as a lower FLOP rate. Softmax, scaling, masking and bias
additions are not counted (they are O(b*h*t*t) and O(b*t*d), not matmul work).

Backward: every product ``A @ B`` needs two products of the same size for the gradients of ``A`` and
``B``, so the ``backward`` mode (forward + backward of a scalar loss) counts ``3 x`` the forward FLOPs.
"""

from __future__ import annotations

from ..implementations.base import Mode

__all__ = ["FLOP_FORMULA", "attention_flops", "matmul_flops", "visible_pairs"]

FLOP_FORMULA = (
    "forward = 8*b*t*d^2 (q, k, v, out projections) + 2*b*d*t*(t+1) (causal attention: QK^T and AV over "
    "the t(t+1)/2 visible pairs per head; with a window or packing only the visible pairs; with GQA the k, v "
    "projections are d x d_kv); backward mode (forward + backward) = 3 x forward"
)


def visible_pairs(seq_len: int, *, causal: bool = True, window: int | None = None, seq_lens=None) -> int:
    """Query/key pairs that may meet in one head of one row: ``t(t+1)/2`` causal, fewer with a window or packing."""
    lengths = (seq_len,) if seq_lens is None else tuple(seq_lens)
    if not causal:
        return sum(n * n for n in lengths)
    total = 0
    for n in lengths:
        w = n if window is None else min(window, n)
        total += w * (w + 1) // 2 + (n - w) * w  # the first w queries see 1..w keys, the rest w each
    return total


def attention_flops(
    *,
    batch: int,
    seq_len: int,
    d_model: int,
    num_heads: int,
    mode: Mode = "forward",
    causal: bool = True,
    num_kv_heads: int | None = None,
    window: int | None = None,
    seq_lens=None,
) -> float:
    """FLOPs of one call of causal multi-head attention (see the module docstring for the formula).

    ``causal=False`` counts the full ``t x t`` attention (``4 * b * t**2 * d``), which is what
    ``torch.utils.flop_counter`` reports for dense matmuls; the benchmark always uses ``causal=True``.
    """
    if mode not in ("forward", "backward"):
        raise ValueError(f"unknown mode {mode!r}; use 'forward' or 'backward'")
    if d_model % num_heads != 0:
        raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    b, t, d = batch, seq_len, d_model
    d_kv = d if num_kv_heads is None else num_kv_heads * (d // num_heads)
    projections = 2 * b * t * d * (2 * d + 2 * d_kv)  # q and out: d x d; k and v: d x d_kv
    # Per head, (d/h) features per pair, h heads: the head count cancels out.
    attention = 4 * b * d * visible_pairs(t, causal=causal, window=window, seq_lens=seq_lens)
    forward = projections + attention
    return float(forward if mode == "forward" else 3 * forward)


def matmul_flops(m: int, k: int, n: int) -> float:
    """FLOPs of an ``(m, k) x (k, n)`` matrix product."""
    return 2.0 * m * k * n
