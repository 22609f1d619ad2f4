"""FlexAttention (``torch.nn.attention.flex_attention``), compiled, with every feature FlexAttention can express.

FlexAttention splits an attention variant into two small functions that ``torch.compile`` fuses into one
kernel:

- a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` says which keys a query may see. Causal attention, sliding
  windows and packed sequences (a per-token sequence id tensor, captured by the function) are mask_mods.
  ``create_block_mask`` evaluates it once per block of 128 x 128 to find the blocks it can skip; that costs
  a pass over every block, so the block mask is built once per (visibility rule, lengths, device) and cached.
  Per-row key lengths (``kv_lens``, a (b,) tensor captured by the mask_mod) hide the keys past each row's
  length and move its queries' positions to ``q_idx + kv_lens[b] - t_q``; that block mask has a batch axis
  and depends on the lengths' values, so it is built for every call (as a KV cache's lengths change every step).
- a ``score_mod(score, b, h, q_idx, kv_idx) -> score`` changes one (already scaled) score: the softcap
  ``c * tanh(s / c)`` and then ALiBi's ``- slope_h * |p_i - j|`` (the slopes tensor captured).

GQA is FlexAttention's own ``enable_gqa`` (keys/values are not repeated). The log-sum-exp comes from the
kernel (``return_aux=AuxRequest(lse=True)``), which PyTorch already returns in natural-log units (the
kernel works in base 2; the public function multiplies by ln 2). Sinks need no kernel support: with the
kernel's ``lse`` over the visible keys, the sink only enlarges the denominator,
``out_sink = out * e^lse / (e^lse + e^sink) = out * sigmoid(lse - sink)``, and ``lse`` (which excludes the
sink) is unchanged. That is exact, and differentiable through FlexAttention's ``lse`` gradient.

Limits, refused with a clear error: no dropout (the registry refuses it); on the CPU, this PyTorch compiles
FlexAttention for inference only, with no backward pass and no log-sum-exp (so no ``return_lse`` and no
sinks there); causal ``t_q > t_k`` (rows without a visible key; a block mask cannot express them).
Every distinct shape or visibility rule compiles a new kernel (seconds on the CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .spec import AttentionSpec

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import AuxOutput, BlockMask

__all__ = ["FEATURES", "apply_sinks", "flex_attention_backend"]

#: The optional features of :class:`AttentionSpec` this backend does (the registry refuses the others).
FEATURES: frozenset[str] = frozenset(
    {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse"}
)

ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def _compiled_flex_attention(device_type: str) -> Callable[..., torch.Tensor | tuple[torch.Tensor, AuxOutput]]:
    """``torch.compile(flex_attention)``; uncompiled, it falls back to an unfused path that materialises the scores.

    On the CPU every shape gets its own static kernel (``dynamic=False``): once a size or a captured tensor's
    length varies, torch.compile makes it symbolic, and this PyTorch's CPU kernel template then fails to
    compile (C++ errors, measured). The CUDA (Triton) kernels take symbolic sizes, so there one kernel
    serves every length, as KV-cache decoding needs.
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False if device_type == "cpu" else None)


def _has_visibility_rule(spec: AttentionSpec) -> bool:
    """Whether some key is hidden from some query (else FlexAttention needs no block mask)."""
    return spec.causal or spec.window is not None or spec.seq_lens is not None or spec.kv_lens is not None


@functools.lru_cache(maxsize=32)
def _block_mask(
    t_q: int, t_k: int, causal: bool, window: int | None, seq_lens: tuple[int, ...] | None, device: str
) -> BlockMask:
    """The block mask of one visibility rule at these lengths (cached: building it visits every block)."""
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    offset = t_k - t_q  # bottom-right alignment: query i sits at position i + offset

    def causal_rule(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    # The window is captured as a tensor, not an int: a captured int is a compile-time constant, and a
    # second value makes torch.compile turn it symbolic, which the CPU kernel template fails to compile.
    window_size = torch.tensor(window if window is not None else 0, device=device)  # ()

    def window_rule(b, h, q_idx, kv_idx):
        return kv_idx > q_idx + offset - window_size

    rules = [causal_rule] if causal else []
    if window is not None:
        rules.append(window_rule)
    if seq_lens is not None:  # t_q == t_k; token t belongs to sequence seq_id[t]
        lengths = torch.tensor(seq_lens, device=device)  # (n,)
        seq_id = torch.repeat_interleave(torch.arange(len(seq_lens), device=device), lengths)  # (t,)

        def same_sequence(b, h, q_idx, kv_idx):
            return seq_id[q_idx] == seq_id[kv_idx]

        rules.append(same_sequence)
    return create_block_mask(and_masks(*rules), B=None, H=None, Q_LEN=t_q, KV_LEN=t_k, device=device)


def _kv_lens_block_mask(t_q: int, t_k: int, spec: AttentionSpec, device: torch.device) -> BlockMask:
    """The block mask with per-row key lengths: row ``b`` sees keys ``< kv_lens[b]``, its query ``i`` sitting at
    ``i + kv_lens[b] - t_q``; causal and window as usual from there. Built per call (the lengths change)."""
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    lengths = spec.kv_lens.to(torch.int64)  # (b,), captured: one compiled mask for every set of lengths
    window_size = torch.tensor(spec.window if spec.window is not None else 0, device=device)  # () see _block_mask

    def within_row(b, h, q_idx, kv_idx):
        return kv_idx < lengths[b]

    def causal_rule(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + lengths[b] - t_q

    def window_rule(b, h, q_idx, kv_idx):
        return kv_idx > q_idx + lengths[b] - t_q - window_size

    rules = [within_row] + ([causal_rule] if spec.causal else []) + ([window_rule] if spec.window is not None else [])
    return create_block_mask(and_masks(*rules), B=lengths.shape[0], H=None, Q_LEN=t_q, KV_LEN=t_k, device=str(device))


def _score_mod(spec: AttentionSpec, t_q: int, t_k: int, device: torch.device) -> ScoreMod | None:
    """Softcap, then ALiBi, on one scaled score; None when the spec asks for neither."""
    if spec.softcap is None and spec.alibi_slopes is None:
        return None
    offset = t_k - t_q  # query i sits at i + offset; with kv_lens at i + row_offset[b]
    row_offset = None if spec.kv_lens is None else spec.kv_lens.to(torch.int64) - t_q  # (b,)
    # The softcap is captured as a tensor, not a float: a second float value makes torch.compile turn it
    # symbolic, which the CPU kernel template fails to lower. A tensor is a kernel input, one compile for all.
    softcap = None if spec.softcap is None else torch.tensor(spec.softcap, device=device)  # ()
    slopes = spec.alibi_slopes  # (h,)

    def modify(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            cap = softcap.to(score.dtype)
            score = cap * torch.tanh(score / cap)
        if slopes is not None:
            position = q_idx + (offset if row_offset is None else row_offset[b])
            distance = (position - kv_idx).abs()
            score = score - slopes[h].to(score.dtype) * distance.to(score.dtype)
        return score

    return modify


def apply_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Add one sink logit per head to an attention result computed without it.

    ``out`` (b, h, t_q, d) was normalised by ``e^lse`` (``lse`` (b, h, t_q), natural log, over the visible
    keys); with the sink the denominator is ``e^lse + e^sink``, so ``out * e^lse / (e^lse + e^sink)``, which
    is ``out * sigmoid(lse - sink)``. Computed in ``lse``'s dtype, returned in ``out``'s. Differentiable in
    all three inputs (the gradient reaches q, k, v through ``lse`` too). A row with ``lse = -inf`` (no visible
    key) keeps its zeros.
    """
    sink = sinks.to(lse.dtype).view(1, -1, 1)  # (1, h, 1)
    keep = torch.sigmoid(lse - sink).unsqueeze(-1)  # (b, h, t_q, 1)
    return (out.to(keep.dtype) * keep).to(out.dtype)  # (b, h, t_q, d)


def _needs_lse(spec: AttentionSpec) -> bool:
    """The kernel's log-sum-exp is needed to return it and to add the sinks."""
    return spec.return_lse or spec.sinks is not None


def _check_runnable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> None:
    """Refuse what compiled FlexAttention cannot do here, before compiling anything."""
    if q.device.type == "cpu" and _needs_lse(spec):
        asked = [name for name, used in (("return_lse", spec.return_lse), ("sinks", spec.sinks is not None)) if used]
        raise NotImplementedError(
            f"compiled flex attention returns no log-sum-exp on the CPU in this PyTorch (inference kernel only), "
            f"which {' and '.join(asked)} need; run it on CUDA or use another backend"
        )
    if q.device.type == "cpu" and torch.is_grad_enabled():
        needs_grad = [name for name, t in (("q", q), ("k", k), ("v", v)) if t.requires_grad]
        if spec.alibi_slopes is not None and spec.alibi_slopes.requires_grad:
            needs_grad.append("alibi_slopes")
        if needs_grad:
            raise NotImplementedError(
                f"flex attention has no backward pass on the CPU in this PyTorch, and {', '.join(needs_grad)} "
                "requires grad; run it under torch.no_grad() or on CUDA"
            )
    t_q, t_k = q.shape[-2], k.shape[-2]
    if spec.causal and t_q > t_k:
        raise ValueError(f"flex backend needs t_q <= t_k for causal attention, got t_q={t_q} > t_k={t_k}")


def flex_attention_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Compiled FlexAttention on q (b, h, t_q, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse (b, h, t_q)]."""
    _check_runnable(q, k, v, spec)
    t_q, t_k = q.shape[-2], k.shape[-2]
    if t_q == 0 or t_k == 0:  # nothing to compile (flex's block mask cannot be built): every row sees no key
        out = q.new_zeros(q.shape)  # (b, h, t_q, d)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)  # (b, h, t_q)
        return (out, lse) if spec.return_lse else out
    block_mask = None
    if spec.kv_lens is not None:
        block_mask = _kv_lens_block_mask(t_q, t_k, spec, q.device)
    elif _has_visibility_rule(spec):
        block_mask = _block_mask(t_q, t_k, spec.causal, spec.window, spec.seq_lens, str(q.device))
    if spec.kv_lens is not None:  # unwritten cache slots: zeros (0 * NaN would leak into the output)
        from .common import zero_past_kv_lens

        k, v = zero_past_kv_lens(k, spec.kv_lens), zero_past_kv_lens(v, spec.kv_lens)
    options = {}
    if _needs_lse(spec):  # AuxRequest is recent PyTorch: imported only when the lse is asked for
        from torch.nn.attention.flex_attention import AuxRequest

        options["return_aux"] = AuxRequest(lse=True)
    result = _compiled_flex_attention(q.device.type)(
        q,
        k,
        v,
        score_mod=_score_mod(spec, t_q, t_k, q.device),
        block_mask=block_mask,
        scale=spec.scale_for(q.shape[-1]),
        enable_gqa=k.shape[1] != q.shape[1],
        **options,
    )
    if not _needs_lse(spec):
        return result  # (b, h, t_q, d)
    out, lse = result[0], result[1].lse  # (b, h, t_q, d), (b, h, t_q) float32, natural log
    if spec.sinks is not None:
        out = apply_sinks(out, lse, spec.sinks)  # (b, h, t_q, d)
    if not spec.return_lse:
        return out
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, lse.to(lse_dtype)
