"""An independent float64 reference for attention: the oracle of every test.

Written differently from every implementation on purpose: explicit Python loops over batch, head and query,
each query attending to the explicit *range* of keys it may see (no boolean mask, no -inf fill), the softmax
spelled out with the largest logit subtracted. It shares no code with the backends (its argument checks
are its own too), is slow, and is only meant for small test sizes.

The semantics, for query ``i`` of ``t_q`` and key ``j`` of ``t_k``:

- positions are aligned bottom-right: query ``i`` sits at position ``p_i = i + (t_k - t_q)``, key ``j`` at ``j``;
  with per-row key lengths ``kv_lens`` (b,), batch row ``r`` has only the keys ``j < kv_lens[r]`` and its query
  ``i`` sits at ``p_i = i + (kv_lens[r] - t_q)`` (the row is attention over its first ``kv_lens[r]`` keys);
- query head ``hh`` reads key/value head ``hh // (h // h_kv)`` (grouped-query attention, Hugging Face's
  ``repeat_kv`` order; ``h_kv = 1`` is multi-query attention);
- the logit is ``s_ij = scale * <q_i, k_j>`` (``scale`` defaults to ``head_dim ** -0.5``), then softcapped,
  ``s = softcap * tanh(s / softcap)``, then ALiBi-biased, ``s -= slope_hh * |p_i - j|``;
- key ``j`` is visible when ``j <= p_i`` (causal), ``p_i - window < j`` (sliding window: the last ``window``
  positions, itself included) and ``j`` lies in the same packed sequence as ``i`` (``seq_lens``);
- an attention sink adds ``exp(sink_hh)`` to the softmax denominator and nothing to the numerator;
- ``lse_i = log(sum over visible j of exp(s_ij))`` (without the sink); a query that sees no key outputs zeros
  and has ``lse = -inf``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from .weights import AttentionWeights

__all__ = ["reference_attention", "reference_core_attention"]


def reference_core_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    seq_lens: torch.Tensor | Sequence[int] | None = None,
    kv_lens: torch.Tensor | Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (b, h, t_q, head_dim) over k, v (b, h_kv, t_k, head_dim) in float64; returns (out, lse).

    ``out`` is (b, h, t_q, head_dim) and ``lse`` (b, h, t_q), both float64, on the device of ``q``. The inputs
    are upcast, and the result is differentiable with respect to ``q``, ``k``, ``v`` and ``sinks``, so autograd
    through it gives reference gradients.

    Args:
        causal: key ``j`` is visible to query ``i`` only if ``j <= p_i = i + t_k - t_q`` (bottom-right).
        scale: multiplies ``<q_i, k_j>``; defaults to ``head_dim ** -0.5``.
        window: a sliding window of ``window`` keys, the query's own position included (needs ``causal``).
        softcap: ``s = softcap * tanh(s / softcap)``, applied after the scale, before the ALiBi bias.
        sinks: (h,) one logit per query head that joins the softmax denominator and adds no value.
        alibi_slopes: (h,) one slope per query head; adds ``-slope * |p_i - j|`` to the logit.
        seq_lens: lengths of the sequences packed along the token axis (needs ``t_q == t_k``, sum ``t_k``); a
            query sees only keys of its own sequence.
        kv_lens: (b,) keys per batch row, each in ``[1, t_k]``; row ``r`` reads only its first ``kv_lens[r]``
            keys/values and its queries end at its last key (``p_i = i + kv_lens[r] - t_q``). Not with seq_lens.
    """
    segments = _check_core_args(q, k, v, causal, scale, window, softcap, sinks, alibi_slopes, seq_lens)
    row_keys = _check_kv_lens(kv_lens, q.shape[0], k.shape[2], seq_lens)  # keys per batch row
    batch, num_heads, t_q, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads  # query heads per key/value head
    scale = head_dim**-0.5 if scale is None else float(scale)
    softcap = None if softcap is None else float(softcap)
    q64, k64, v64 = (t.to(torch.float64) for t in (q, k, v))
    sinks64 = None if sinks is None else sinks.to(torch.float64)  # (h,)
    slopes64 = None if alibi_slopes is None else alibi_slopes.to(torch.float64)  # (h,)

    out_rows: list[torch.Tensor] = []  # b * h * t_q rows of (head_dim,), in (b, h, t_q) order
    lse_rows: list[torch.Tensor] = []  # b * h * t_q scalars
    for b in range(batch):
        n_keys = row_keys[b]  # this row's keys: positions 0 .. n_keys - 1
        for hh in range(num_heads):
            kv_head = hh // group
            sink = None if sinks64 is None else sinks64[hh]  # ()
            for i in range(t_q):
                position = i + n_keys - t_q
                keys = _visible_keys(i, position, n_keys, causal, window, segments)
                if len(keys) == 0:
                    out_rows.append(q64.new_zeros(head_dim))
                    lse_rows.append(q64.new_tensor(-math.inf))
                    continue
                q_i = q64[b, hh, i]  # (head_dim,)
                k_seen = k64[b, kv_head, keys.start : keys.stop]  # (n, head_dim)
                v_seen = v64[b, kv_head, keys.start : keys.stop]  # (n, head_dim)
                logits = (k_seen * q_i).sum(dim=-1) * scale  # (n,)
                if softcap is not None:
                    logits = softcap * torch.tanh(logits / softcap)  # (n,)
                if slopes64 is not None:
                    distance = q64.new_tensor([abs(position - j) for j in keys])  # (n,)
                    logits = logits - slopes64[hh] * distance  # (n,)
                out_row, lse = _softmax_row(logits, v_seen, sink)
                out_rows.append(out_row)
                lse_rows.append(lse)

    if not out_rows:  # an empty batch, head or query axis
        return q64.new_zeros(batch, num_heads, t_q, head_dim), q64.new_zeros(batch, num_heads, t_q)
    out = torch.stack(out_rows).reshape(batch, num_heads, t_q, head_dim)  # (b, h, t_q, head_dim)
    lse = torch.stack(lse_rows).reshape(batch, num_heads, t_q)  # (b, h, t_q)
    return out, lse


def _check_kv_lens(kv_lens: torch.Tensor | Sequence[int] | None, batch: int, t_k: int, seq_lens: object) -> list[int]:
    """Validate the per-row key lengths; return them as ints (``t_k`` for every row when None)."""
    if kv_lens is None:
        return [t_k] * batch
    if seq_lens is not None:
        raise ValueError("kv_lens and seq_lens cannot be combined: pass one of them")
    if isinstance(kv_lens, torch.Tensor):
        if kv_lens.dim() != 1 or kv_lens.is_floating_point() or kv_lens.is_complex() or kv_lens.dtype == torch.bool:
            raise ValueError(
                f"kv_lens must be a 1-D integer tensor, got shape {tuple(kv_lens.shape)} and dtype {kv_lens.dtype}"
            )
        lengths = [int(n) for n in kv_lens.tolist()]
    elif isinstance(kv_lens, (list, tuple)) and all(_is_int(n) for n in kv_lens):
        lengths = [int(n) for n in kv_lens]
    else:
        raise ValueError(f"kv_lens must be a 1-D integer tensor or a list/tuple of ints, got {kv_lens!r}")
    if len(lengths) != batch:
        raise ValueError(f"kv_lens has {len(lengths)} entries, expected one per batch row ({batch})")
    if any(not 1 <= n <= t_k for n in lengths):
        raise ValueError(f"kv_lens {lengths} must each lie in [1, t_k={t_k}]")
    return lengths


def _visible_keys(
    i: int, position: int, t_k: int, causal: bool, window: int | None, segments: list[tuple[int, int]] | None
) -> range:
    """The keys query ``i`` (at ``position``) may see: always one contiguous range, possibly empty."""
    start, stop = 0, t_k
    if segments is not None:  # t_q == t_k here, so position == i
        start, stop = next((s, e) for s, e in segments if s <= i < e)
    if causal:
        stop = min(stop, position + 1)  # keys at positions <= the query's
    if window is not None:
        start = max(start, position - window + 1)  # the last `window` positions, the query's own included
    return range(start, max(start, stop))


def _softmax_row(
    logits: torch.Tensor, v_seen: torch.Tensor, sink: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query's output and log-sum-exp from its visible logits (n,) and values (n, head_dim).

    The shifts below are constants (detached): softmax and log-sum-exp do not depend on them mathematically,
    they only keep ``exp`` from overflowing. With a sink, the shift is the largest of the logits and the sink.
    """
    top = logits.max().detach()  # ()
    shift = top if sink is None else torch.maximum(top, sink.detach())  # ()
    weights = torch.exp(logits - shift)  # (n,)
    denominator = weights.sum()  # ()
    if sink is not None:
        denominator = denominator + torch.exp(sink - shift)  # the sink takes its share, adds no value
    out_row = (weights[:, None] * v_seen).sum(dim=0) / denominator  # (head_dim,)
    lse = top + torch.log(torch.exp(logits - top).sum())  # () the sink excluded
    return out_row, lse


def _check_core_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    seq_lens: torch.Tensor | Sequence[int] | None,
) -> list[tuple[int, int]] | None:
    """Raise ``ValueError`` on any bad argument; return the packed sequences as [start, end) pairs, or None."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on device {tensor.device}, q on {q.device}: they must share one device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, num_heads, t_q, head_dim = q.shape
    num_kv_heads, t_k = k.shape[1], k.shape[2]
    if (k.shape[0], k.shape[3]) != (batch, head_dim):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim")
    if head_dim < 1:
        raise ValueError(f"head_dim must be at least 1, got {head_dim}")
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"q has {num_heads} heads and k/v {num_kv_heads}: both must be >= 1 and {num_heads} a multiple of "
            f"{num_kv_heads}"
        )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False, got {causal!r}")
    for name, value in (("scale", scale), ("softcap", softcap)):
        if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be None or a finite number > 0, got {value!r}")
    if window is not None:
        if not (_is_int(window) and window >= 1):
            raise ValueError(f"window must be None or an integer >= 1, got {window!r}")
        if not causal:
            raise ValueError(f"window={window} needs causal=True (a sliding window looks back only)")
    for name, per_head in (("sinks", sinks), ("alibi_slopes", alibi_slopes)):
        if per_head is None:
            continue
        if not isinstance(per_head, torch.Tensor) or not per_head.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of shape ({num_heads},), got {per_head!r}")
        if per_head.shape != (num_heads,):
            raise ValueError(f"{name} has shape {tuple(per_head.shape)}, expected ({num_heads},): one per query head")
        if per_head.device != q.device:
            raise ValueError(f"{name} is on device {per_head.device}, q on {q.device}: they must share one device")
    if seq_lens is None:
        return None
    return _check_seq_lens(seq_lens, t_q, t_k)


def _check_seq_lens(seq_lens: torch.Tensor | Sequence[int], t_q: int, t_k: int) -> list[tuple[int, int]]:
    """Validate the packed lengths; return each sequence's [start, end) token range."""
    if isinstance(seq_lens, torch.Tensor):
        if seq_lens.dim() != 1 or seq_lens.is_floating_point() or seq_lens.is_complex() or seq_lens.dtype == torch.bool:
            raise ValueError(
                f"seq_lens must be a 1-D integer tensor or a list of ints, got a tensor of shape "
                f"{tuple(seq_lens.shape)} and dtype {seq_lens.dtype}"
            )
        lengths = seq_lens.tolist()
    elif isinstance(seq_lens, (list, tuple)) and all(_is_int(n) for n in seq_lens):
        lengths = [int(n) for n in seq_lens]
    else:
        raise ValueError(f"seq_lens must be a 1-D integer tensor or a list/tuple of ints, got {seq_lens!r}")
    if t_q != t_k:
        raise ValueError(f"seq_lens needs as many queries as keys (packed self-attention), got t_q={t_q}, t_k={t_k}")
    if any(n < 1 for n in lengths) or sum(lengths) != t_k:
        raise ValueError(f"seq_lens {lengths} must be lengths >= 1 summing to the {t_k} tokens")
    segments = []
    start = 0
    for n in lengths:
        segments.append((start, start + n))
        start += n
    return segments


def reference_attention(
    x: torch.Tensor,
    weights: AttentionWeights,
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal multi-head self-attention of ``x`` (b, t, d_in) in float64; returns (b, t, d_out) float64.

    Differentiable, so gradients with respect to ``x`` and the weights (``sinks`` included) serve as
    references too. The keys and values have ``num_kv_heads`` heads (grouped-query attention); by default
    as many as ``weights.d_kv`` holds, which is ``num_heads`` for ordinary weights. ``weights.sinks``, when
    present, are the heads' attention sinks; ``window`` and ``softcap`` are as in
    :func:`reference_core_attention`.
    """
    num_kv_heads = _check_module_args(x, weights, num_heads, num_kv_heads)
    x = x.to(torch.float64)  # (b, t, d_in)
    w = weights.to(dtype=torch.float64)
    head_dim = w.d_out // num_heads

    def project(W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = x @ W.T  # (b, t, out_features)
        return out if bias is None else out + bias

    def split(features: torch.Tensor, heads: int) -> torch.Tensor:
        columns = [features[:, :, g * head_dim : (g + 1) * head_dim] for g in range(heads)]  # heads x (b, t, hd)
        return torch.stack(columns, dim=1)  # (b, heads, t, hd)

    queries = split(project(w.W_query, w.b_query), num_heads)  # (b, h, t, hd)
    keys = split(project(w.W_key, w.b_key), num_kv_heads)  # (b, h_kv, t, hd)
    values = split(project(w.W_value, w.b_value), num_kv_heads)  # (b, h_kv, t, hd)
    context, _ = reference_core_attention(
        queries, keys, values, causal=True, window=window, softcap=softcap, sinks=w.sinks
    )  # (b, h, t, hd)
    context_vec = torch.cat([context[:, hh] for hh in range(num_heads)], dim=-1)  # (b, t, d_out)
    return context_vec @ w.W_out.T + w.b_out  # (b, t, d_out)


def _check_module_args(x: torch.Tensor, weights: AttentionWeights, num_heads: int, num_kv_heads: int | None) -> int:
    """Raise ``ValueError`` on a bad argument of :func:`reference_attention`; return the number of kv heads."""
    if not isinstance(weights, AttentionWeights):
        raise ValueError(f"weights must be an AttentionWeights, got {type(weights).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 3-D tensor (batch, tokens, d_in), got {shape}")
    if x.shape[-1] != weights.d_in:
        raise ValueError(f"x has last dimension {x.shape[-1]}, the weights' d_in is {weights.d_in}")
    d_out, d_kv = weights.d_out, weights.d_kv
    if not (_is_int(num_heads) and num_heads >= 1):
        raise ValueError(f"num_heads must be an integer >= 1, got {num_heads!r}")
    if d_out % num_heads != 0:
        raise ValueError(f"d_out {d_out} is not divisible by num_heads {num_heads}")
    head_dim = d_out // num_heads
    if d_kv % head_dim != 0:
        raise ValueError(f"the weights' d_kv={d_kv} is not a multiple of head_dim={head_dim} (d_out/num_heads)")
    kv_heads_in_weights = d_kv // head_dim
    if num_kv_heads is not None and (not _is_int(num_kv_heads) or num_kv_heads != kv_heads_in_weights):
        raise ValueError(
            f"num_kv_heads={num_kv_heads!r}, but the weights' d_kv={d_kv} holds {kv_heads_in_weights} heads of "
            f"head_dim {head_dim}"
        )
    if weights.sinks is not None and weights.sinks.shape != (num_heads,):
        raise ValueError(f"weights.sinks has shape {tuple(weights.sinks.shape)}, expected ({num_heads},)")
    return kv_heads_in_weights


def _is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (which Python counts as integers)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """True for Python and NumPy real numbers, False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
