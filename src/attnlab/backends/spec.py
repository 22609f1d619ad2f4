"""One attention call, described once: :class:`AttentionSpec`, the options every backend understands.

A backend is called as ``BACKENDS[name](q, k, v, *, causal=True, scale=None, window=None, softcap=None,
sinks=None, alibi_slopes=None, seq_lens=None, kv_lens=None, return_lse=False, dropout_p=0.0)``. Those keywords become
one frozen :class:`AttentionSpec`, validated when it is built (the options) and by :meth:`AttentionSpec.check`
(the tensors), so a multi-head layer can build its spec once and hand it to any backend.

Semantics (the float64 reference in :mod:`attnlab.reference` is written from these sentences alone):

- **Shapes**: q is ``(b, h, t_q, head_dim)``, k and v are ``(b, h_kv, t_k, head_dim)``.
- **Positions** are aligned bottom-right: query ``i`` sits at position ``p_i = i + (t_k - t_q)``, key ``j``
  at ``j`` (the queries are the last ``t_q`` positions, as in KV-cache decoding).
- **GQA / MQA** (``h_kv < h``, ``h % h_kv == 0``): query head ``i`` uses key/value head ``i // (h // h_kv)``,
  Hugging Face's ``repeat_kv`` order.
- **Scores** ``s_ij = scale * <q_i, k_j>``, ``scale`` defaulting to ``head_dim ** -0.5``; then the
  **softcap** ``c``: ``s = c * tanh(s / c)`` (Gemma 2); then **ALiBi**: ``s -= slope_h * |p_i - j|``.
- **Visibility**: ``causal`` keeps keys ``j <= p_i``; a **window** ``w`` (only with ``causal``) keeps
  ``p_i - w < j <= p_i``, ``w`` keys including the query's own (Hugging Face's ``sliding_window``);
  **packed sequences** ``seq_lens`` (``t_q == t_k``) keep only keys of the query's own sequence.
- **Per-row key lengths** ``kv_lens`` (an integer tensor ``(b,)``, ``1 <= kv_lens[r] <= t_k``): batch row ``r``
  has only its first ``kv_lens[r]`` keys/values (the rest is padding or unwritten cache) and its queries are
  aligned bottom-right to them, ``p_i = i + (kv_lens[r] - t_q)`` (FlashAttention's ``cache_seqlens``); every
  rule above then uses that ``p_i`` (under ``causal`` a query with ``p_i < 0`` sees no key). Not with ``seq_lens``.
- **Sinks** ``(h,)``: one learned logit per query head that joins the softmax denominator and adds no value
  (gpt-oss): ``out_i = sum_j e^{s_ij} v_j / (sum_j e^{s_ij} + e^{sink_h})``. It is not scaled or capped.
- **lse** (``return_lse=True``): ``log sum_j e^{s_ij}`` over the visible keys, *without* the sink, float32
  (float64 for float64 inputs), ``-inf`` for a row that sees no key. Partial results merge on it.
- A row that sees no key outputs zeros and has zero, finite gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

__all__ = ["FEATURES", "MAX_SOFTCAP", "MAX_WINDOW", "AttentionSpec", "check_qkv"]

#: Every optional feature, by the keyword that asks for it ("gqa" is asked for by k/v with fewer heads).
FEATURES: tuple[str, ...] = (
    "gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse", "dropout",
)  # fmt: skip


#: Largest window: far beyond any sequence (a window longer than the keys is plain causal attention), small
#: enough that position arithmetic in int64 cannot overflow.
MAX_WINDOW = 2**62
#: Largest softcap: c * tanh(s / c) must stay finite in float32 (float32's maximum is 3.4e38; beyond ~1e30 the
#: cap changes no score anyway).
MAX_SOFTCAP = 1e30


def _is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is an int in Python, but never a sensible size or scale)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_finite(name: str, value: object) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _normalise_seq_lens(seq_lens: object) -> tuple[int, ...]:
    """A tuple of positive ints from a list, tuple or 1-D integer tensor of lengths."""
    if isinstance(seq_lens, torch.Tensor):
        if seq_lens.dim() != 1 or seq_lens.is_floating_point() or seq_lens.is_complex() or seq_lens.dtype == torch.bool:
            raise ValueError(
                f"seq_lens must be a 1-D integer tensor or a list of ints, got a {seq_lens.dtype} tensor of shape "
                f"{tuple(seq_lens.shape)}"
            )
        seq_lens = seq_lens.tolist()
    if not isinstance(seq_lens, (list, tuple)) or len(seq_lens) == 0:
        raise ValueError(f"seq_lens must be a non-empty list of positive ints, got {seq_lens!r}")
    for length in seq_lens:
        if not _is_int(length) or length < 1:
            raise ValueError(f"seq_lens must hold positive ints, got {length!r} in {list(seq_lens)}")
    return tuple(seq_lens)


def _check_kv_lens_tensor(kv_lens: object) -> None:
    """kv_lens on its own: a 1-D integer tensor (its length, device and values are checked against q and k)."""
    if not isinstance(kv_lens, torch.Tensor):
        raise ValueError(
            f"kv_lens must be a 1-D integer tensor (one length per batch row), got {type(kv_lens).__name__}"
        )
    if kv_lens.dim() != 1 or kv_lens.is_floating_point() or kv_lens.is_complex() or kv_lens.dtype == torch.bool:
        raise ValueError(
            f"kv_lens must be a 1-D integer tensor (one length per batch row), got a {kv_lens.dtype} tensor of shape "
            f"{tuple(kv_lens.shape)}"
        )


def _check_kv_lens_against(kv_lens: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """kv_lens fits the call: (b,), on q's device, 1 <= kv_lens[r] <= t_k (values unread while compiling)."""
    b, t_k = q.shape[0], k.shape[2]
    if kv_lens.shape != (b,):
        raise ValueError(f"kv_lens must have shape ({b},), one length per batch row, got {tuple(kv_lens.shape)}")
    if kv_lens.device != q.device:
        raise ValueError(f"kv_lens is on {kv_lens.device} but q is on {q.device}")
    if b == 0 or torch.compiler.is_compiling():  # reading the values would break the compiled graph
        return
    low, high = int(kv_lens.min()), int(kv_lens.max())
    if low < 1 or high > t_k:
        raise ValueError(f"kv_lens must lie in [1, t_k={t_k}], got values from {low} to {high}: {kv_lens.tolist()}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ``ValueError`` unless q is (b, h, t_q, d) and k, v are (b, h_kv, t_k, d) with ``h % h_kv == 0``."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(tensor.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, _, head_dim = q.shape
    if (k.shape[0], k.shape[3]) != (b, head_dim):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim")
    if head_dim < 1:
        raise ValueError(f"head_dim must be at least 1, got {head_dim}")
    h_kv = k.shape[1]
    if h_kv < 1 or h % h_kv != 0:
        raise ValueError(
            f"q has {h} heads and k, v have {h_kv}: the query heads must be a positive multiple of the key/value "
            "heads (GQA/MQA)"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")


def _check_per_head(name: str, tensor: torch.Tensor, q: torch.Tensor) -> None:
    """sinks and alibi_slopes: one real value per query head, on q's device."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape (heads,), got {type(tensor).__name__}")
    h = q.shape[1]
    if tensor.shape != (h,):
        raise ValueError(f"{name} must have shape ({h},), one value per query head, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {tensor.dtype}")
    if tensor.device != q.device:
        raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """The options of one attention call (see the module docstring for their exact meaning).

    Built from the backend keywords; invalid options raise ``ValueError`` naming the value. ``sinks`` and
    ``alibi_slopes`` are tensors (sinks usually a learned parameter, so its gradient flows); ``seq_lens`` is
    stored as a tuple of ints; ``kv_lens`` stays a device tensor (b,) (a KV cache's lengths, never read back
    to the host by the spec while compiling).
    """

    causal: bool = True
    scale: float | None = None
    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None
    seq_lens: tuple[int, ...] | None = None
    kv_lens: torch.Tensor | None = None
    return_lse: bool = False
    dropout_p: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be True or False, got {self.causal!r}")
        if not isinstance(self.return_lse, bool):
            raise ValueError(f"return_lse must be True or False, got {self.return_lse!r}")
        if self.scale is not None:
            _positive_finite("scale", self.scale)
        if self.softcap is not None:
            _positive_finite("softcap", self.softcap)
            if self.softcap > MAX_SOFTCAP:
                raise ValueError(f"softcap {self.softcap!r} exceeds {MAX_SOFTCAP:g} (it would overflow float32)")
        if self.window is not None:
            if not _is_int(self.window) or self.window < 1:
                raise ValueError(
                    f"window must be a positive int (keys a query sees, itself included), got {self.window!r}"
                )
            if self.window > MAX_WINDOW:
                raise ValueError(f"window {self.window} exceeds 2**62 (no sequence is that long)")
            if not self.causal:
                raise ValueError(f"window={self.window} needs causal=True (a sliding window looks back only)")
        if not _is_real(self.dropout_p) or not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"dropout_p {self.dropout_p!r} must be in [0, 1)")
        if self.seq_lens is not None:
            object.__setattr__(self, "seq_lens", _normalise_seq_lens(self.seq_lens))
        if self.kv_lens is not None:
            _check_kv_lens_tensor(self.kv_lens)
            if self.seq_lens is not None:
                raise ValueError(
                    "kv_lens cannot be combined with seq_lens (per-row key lengths vs packed sequences in one row); "
                    "pass one of them"
                )

    # -- what the call asks for --------------------------------------------------------------------------

    def features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[str, ...]:
        """The optional features (names from :data:`FEATURES`) this call uses, in that order."""
        used = {
            "gqa": k.shape[1] != q.shape[1],
            "window": self.window is not None,
            "softcap": self.softcap is not None,
            "sinks": self.sinks is not None,
            "alibi_slopes": self.alibi_slopes is not None,
            "seq_lens": self.seq_lens is not None,
            "kv_lens": self.kv_lens is not None,
            "return_lse": self.return_lse,
            "dropout": self.dropout_p > 0.0,
        }
        return tuple(name for name in FEATURES if used[name])

    def check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Raise ``ValueError`` unless the tensors fit each other and these options."""
        check_qkv(q, k, v)
        if self.sinks is not None:
            _check_per_head("sinks", self.sinks, q)
        if self.alibi_slopes is not None:
            _check_per_head("alibi_slopes", self.alibi_slopes, q)
        if self.seq_lens is not None:
            t_q, t_k = q.shape[2], k.shape[2]
            if t_q != t_k:
                raise ValueError(f"seq_lens packs self-attention and needs t_q == t_k, got t_q={t_q}, t_k={t_k}")
            if sum(self.seq_lens) != t_q:
                raise ValueError(f"seq_lens {list(self.seq_lens)} sum to {sum(self.seq_lens)}, not to t={t_q} tokens")
        if self.kv_lens is not None:
            _check_kv_lens_against(self.kv_lens, q, k)

    # -- derived quantities shared by the backends ------------------------------------------------------

    def scale_for(self, head_dim: int) -> float:
        """The softmax scale: ``1/sqrt(head_dim)`` unless given."""
        return head_dim**-0.5 if self.scale is None else float(self.scale)

    def seq_starts(self) -> tuple[int, ...]:
        """The first token of each packed sequence (``(0,)`` when nothing is packed is not implied: needs seq_lens)."""
        if self.seq_lens is None:
            raise ValueError("seq_starts needs seq_lens")
        return tuple(sum(self.seq_lens[:i]) for i in range(len(self.seq_lens)))
