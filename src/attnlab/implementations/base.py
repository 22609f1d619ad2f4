"""What every multi-head attention implementation shares: one constructor, one interface, one set of checks.

An implementation subclasses :class:`MultiHeadAttentionBase`, stores its parameters in whatever layout it
likes, and writes three methods:

- ``attend(x)``: the computation, ``(b, t, d_in) -> (b, t, d_out)``, causal, with dropout on the
  attention weights in training mode;
- ``set_weights(w)``: load an :class:`~attnlab.weights.AttentionWeights`;
- ``_export(pick)``: return its parameters as ``AttentionWeights``, each passed through ``pick``
  (which returns a parameter's data or its gradient; layout changes are linear, so one mapping serves both).

Optionally, ``attend_cached(x, cache)``: the same computation for new tokens only, against the keys and
values stored in a :class:`~attnlab.implementations.kv_cache.LayerKVCache` (KV-cache decoding). Writing
it is what declares the capability: :meth:`MultiHeadAttentionBase.supports_kv_cache` checks for it, so a
subclass that replaces ``capabilities`` cannot lose it by accident.

The base class validates the configuration at construction and every input in ``forward``, so bad
input gets a clear ``ValueError`` naming the value and the limit instead of a shape error from deep
inside PyTorch.

Modern options (one constructor for all): ``num_kv_heads`` (grouped-query attention; 1 is multi-query),
``window`` (sliding window), ``softcap`` and ``sinks`` (one learned logit per head, the parameter
``self.sinks``), with the semantics of :mod:`attnlab.backends.spec`. Each implementation declares in
``capabilities.features`` which of them (and ``dropout``) its design can express; asking for one it cannot is
an :class:`UnsupportedFeatureError` (a ``ValueError``) naming the option, raised at construction, never an
option silently ignored. Implementations built on a backend derive their capabilities from it
(:meth:`Capabilities.from_backend`), so they cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from ..availability import missing_packages_reason
from ..backends.spec import MAX_SOFTCAP, MAX_WINDOW
from ..weights import AttentionWeights
from .kv_cache import LayerKVCache

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = [
    "FEATURE_OPTIONS",
    "Capabilities",
    "Mode",
    "MultiHeadAttentionBase",
    "UnsupportedFeatureError",
    "check_layer_options",
    "copy_into",
    "requested_features",
]

Mode = Literal["forward", "backward"]

#: The optional features a multi-head module can be asked for, each with the constructor option that asks
#: for it (feature names are those of :data:`attnlab.backends.FEATURES`).
FEATURE_OPTIONS: dict[str, str] = {
    "gqa": "num_kv_heads",
    "window": "window",
    "softcap": "softcap",
    "sinks": "sinks",
    "dropout": "dropout",
}


def requested_features(
    *,
    num_heads: int,
    num_kv_heads: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: bool = False,
    dropout: float = 0.0,
) -> tuple[str, ...]:
    """The features (keys of :data:`FEATURE_OPTIONS`) that these constructor options ask for, in that order."""
    used = {
        "gqa": num_kv_heads is not None and num_kv_heads != num_heads,
        "window": window is not None,
        "softcap": softcap is not None,
        "sinks": sinks is True,
        "dropout": dropout != 0,
    }
    return tuple(feature for feature in FEATURE_OPTIONS if used[feature])


class UnsupportedFeatureError(ValueError):
    """An implementation was asked for an option its design cannot express (``feature``, via ``option``)."""

    def __init__(self, implementation: str, feature: str, value: object) -> None:
        self.implementation = implementation
        self.feature = feature
        self.option = FEATURE_OPTIONS[feature]
        self.value = value
        super().__init__(f"{implementation} does not support {self.option}; got {self.option}={value!r}")


def _check_known(features: Iterable[str]) -> None:
    """Raise ``ValueError`` naming any feature that is not a key of :data:`FEATURE_OPTIONS`."""
    unknown = sorted(set(features) - set(FEATURE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {', '.join(FEATURE_OPTIONS)}")


@dataclass(frozen=True)
class Capabilities:
    """What an implementation can do, declared up front so that tools can skip instead of crash.

    ``features`` are the optional features (keys of :data:`FEATURE_OPTIONS`) its design can express;
    implementations built on a backend get theirs, and where they run, from :meth:`from_backend`.
    """

    features: frozenset[str] = frozenset()  # e.g. {"gqa", "window", "softcap", "sinks", "dropout"}
    needs_d_in_equal_d_out: bool = False  # e.g. nn.MultiheadAttention projects queries at width d_out
    no_backward_on: tuple[str, ...] = ()  # device types ("cpu", "cuda", "mps") without a backward pass
    devices: tuple[str, ...] | None = None  # device types it runs on; None means any
    requires: tuple[str, ...] = ()  # importable packages it needs
    device_reason: Callable[[str], str | None] | None = None  # a finer device rule (why not on a device type)

    def __post_init__(self) -> None:
        _check_known(self.features)

    @classmethod
    def from_backend(cls, backend: Backend) -> Capabilities:
        """The capabilities a module inherits from its attention backend: the module-level features the backend
        declares (dropout included), where it has no backward pass, the packages and devices it needs."""
        return cls(
            features=frozenset(backend.features) & frozenset(FEATURE_OPTIONS),
            no_backward_on=backend.no_backward_on,
            requires=backend.requires,
            device_reason=backend.device_reason,
        )

    @property
    def dropout(self) -> bool:
        """Whether it does dropout on the attention weights in training mode."""
        return "dropout" in self.features

    def unsupported_feature(self, features: Iterable[str]) -> str | None:
        """The first of ``features`` (keys of :data:`FEATURE_OPTIONS`) this implementation cannot do, or None."""
        features = tuple(features)
        _check_known(features)
        return next((feature for feature in features if feature not in self.features), None)

    def unavailable_reason(self) -> str | None:
        """Why the implementation cannot run on this machine at all, or None."""
        return missing_packages_reason(self.requires)

    def unsupported_reason(self, device_type: str, mode: Mode = "forward", features: Iterable[str] = ()) -> str | None:
        """Why the implementation cannot run on ``device_type`` in ``mode`` with ``features``, or None when it can."""
        if (reason := self.unavailable_reason()) is not None:
            return reason
        if (feature := self.unsupported_feature(features)) is not None:
            return f"does not support {FEATURE_OPTIONS[feature]}"
        if self.devices is not None and device_type not in self.devices:
            return f"runs only on {', '.join(self.devices)}, not {device_type}"
        if self.device_reason is not None and (reason := self.device_reason(device_type)) is not None:
            return reason
        if mode == "backward" and device_type in self.no_backward_on:
            return f"has no backward pass on {device_type}"
        return None


def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into a parameter in place (keeps its device, dtype and identity)."""
    with torch.no_grad():
        param.copy_(value)


class MultiHeadAttentionBase(nn.Module):
    """Causal multi-head self-attention: ``(b, t, d_in) -> (b, t, d_out)``, ``num_heads`` query heads of
    ``head_dim = d_out // num_heads`` features reading ``num_kv_heads`` key/value heads, sequences up to
    ``context_length`` tokens; optionally a sliding ``window``, a ``softcap`` on the scores and learned
    ``sinks``."""

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(
        self,
        *,
        d_in: int,
        d_out: int,
        num_heads: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        num_kv_heads: int | None = None,
        window: int | None = None,
        softcap: float | None = None,
        sinks: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_in", d_in),
            ("d_out", d_out),
            ("num_heads", num_heads),
            ("context_length", context_length),
        ):
            # bool is a subclass of int in Python; True is a mistake here, not the number 1.
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d_out % num_heads != 0:
            raise ValueError(f"d_out {d_out} is not divisible by num_heads {num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(f"dropout must be a real number in [0, 1), got {dropout!r} ({type(dropout).__name__})")
        if not 0.0 <= dropout < 1.0:  # also refuses nan, for which every comparison is False
            raise ValueError(f"dropout {dropout} must be in [0, 1)")
        if not isinstance(qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {qkv_bias!r}")
        check_layer_options(num_heads, num_kv_heads, window, softcap, sinks)
        name = type(self).__name__
        options = {"gqa": num_kv_heads, "window": window, "softcap": softcap, "sinks": sinks, "dropout": dropout}
        requested = requested_features(
            num_heads=num_heads, num_kv_heads=num_kv_heads, window=window, softcap=softcap, sinks=sinks, dropout=dropout
        )
        if (feature := self.capabilities.unsupported_feature(requested)) is not None:
            raise UnsupportedFeatureError(name, feature, options[feature])
        if self.capabilities.needs_d_in_equal_d_out and d_in != d_out:
            raise ValueError(f"{name} needs d_in == d_out, got d_in {d_in} and d_out {d_out}")
        self.d_in = int(d_in)
        self.d_out = int(d_out)
        self.num_heads = int(num_heads)
        self.head_dim = self.d_out // self.num_heads
        self.num_kv_heads = self.num_heads if num_kv_heads is None else int(num_kv_heads)
        self.d_kv = self.num_kv_heads * self.head_dim  # width of the key and value projections
        self.context_length = int(context_length)
        self.dropout_p = float(dropout)
        self.qkv_bias = qkv_bias
        self.window = None if window is None else int(window)
        self.softcap = None if softcap is None else float(softcap)
        # One learned logit per query head, joining each softmax's denominator (see attnlab.backends.spec).
        # Zeros to start: the sink then weighs like one key with score 0.
        self.sinks = nn.Parameter(torch.zeros(self.num_heads)) if sinks else None  # (h,)

    # -- the interface ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *, seq_lens: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Causal attention of ``x`` (b, t, d_in) -> (b, t, d_out).

        ``seq_lens`` packs several sequences into each row (lengths summing to ``t``, the same packing for
        every row): no token attends across a boundary. Only implementations with :meth:`attend_packed` (see
        :meth:`supports_packed_sequences`) take it; the others refuse it by name.
        """
        self.check_input(x)
        if seq_lens is None:
            return self.attend(x)
        if not self.supports_packed_sequences():
            raise ValueError(f"{type(self).__name__} cannot pack sequences (seq_lens); use an implementation that can")
        return self.attend_packed(x, seq_lens)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def supports_packed_sequences(cls) -> bool:
        """Whether ``forward(x, seq_lens=...)`` works: the implementation overrides ``attend_packed``."""
        return cls.attend_packed is not MultiHeadAttentionBase.attend_packed

    def attend_packed(self, x: torch.Tensor, seq_lens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def supports_kv_cache(cls) -> bool:
        """Whether this implementation has a KV-cache path (it overrides ``attend_cached``)."""
        return cls.attend_cached is not MultiHeadAttentionBase.attend_cached

    def forward_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        """Attend the new tokens ``x`` (b, t, d_in) to the ``cache.length`` cached ones and to each other
        (causally), append their keys/values to ``cache``; returns (b, t, d_out). Inference only."""
        if not self.supports_kv_cache():
            raise NotImplementedError(f"{type(self).__name__} has no KV-cache path (no attend_cached)")
        self.check_input(x)
        return self.attend_cached(x, cache)

    def attend_cached(self, x: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
        raise NotImplementedError

    def set_weights(self, weights: AttentionWeights) -> None:
        raise NotImplementedError

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        raise NotImplementedError

    def get_weights(self) -> AttentionWeights:
        """This module's parameters, copied, in the common ``nn.Linear`` layout."""
        return self._export(lambda p: p.detach().clone())

    def get_weight_grads(self) -> AttentionWeights:
        """The gradients of this module's parameters in the common layout (zeros where none was computed)."""
        return self._export(lambda p: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())

    # -- shared helpers -----------------------------------------------------------------------------

    @property
    def attn_dropout_p(self) -> float:
        """The dropout probability to apply now: the configured one in training mode, 0 in eval mode."""
        return self.dropout_p if self.training else 0.0

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless x is (batch, tokens, d_in) with 1 <= tokens <= context_length."""
        if x.dim() != 3:
            raise ValueError(f"input must be 3-D (batch, tokens, d_in), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input last dimension {x.shape[-1]} does not match d_in {self.d_in}")
        num_tokens = x.shape[1]
        if num_tokens > self.context_length:
            raise ValueError(f"sequence length {num_tokens} exceeds context_length {self.context_length}")
        if num_tokens < 1:
            raise ValueError("sequence length 0: the input needs at least one token")
        param = next(self.parameters(), None)
        if param is not None and (x.dtype, x.device) != (param.dtype, param.device):
            raise ValueError(
                f"input is {x.dtype} on {x.device} but the module's parameters are {param.dtype} on "
                f"{param.device}; move one to match (module.to(...) or x.to(...))"
            )

    def check_weights(self, weights: AttentionWeights) -> None:
        """Raise ``ValueError`` unless ``weights`` fit this module's d_in, d_out, d_kv, qkv_bias and sinks and
        every tensor is floating point (integer, bool or complex weights would be cast silently by the copy)."""
        for field in fields(weights):
            tensor = getattr(weights, field.name)
            if tensor is not None and not tensor.is_floating_point():
                raise ValueError(f"weights.{field.name} is {tensor.dtype}; weights must be floating-point tensors")
        if (weights.d_in, weights.d_out) != (self.d_in, self.d_out):
            raise ValueError(
                f"weights are for d_in={weights.d_in}, d_out={weights.d_out}; "
                f"this module has d_in={self.d_in}, d_out={self.d_out}"
            )
        if weights.d_kv != self.d_kv:
            raise ValueError(
                f"weights have key/value width d_kv={weights.d_kv}; this module has d_kv={self.d_kv} "
                f"(num_kv_heads={self.num_kv_heads} x head_dim={self.head_dim})"
            )
        if weights.qkv_bias != self.qkv_bias:
            raise ValueError(f"weights have qkv_bias={weights.qkv_bias}; this module has qkv_bias={self.qkv_bias}")
        if weights.has_sinks != (self.sinks is not None):
            raise ValueError(
                f"weights {'carry' if weights.has_sinks else 'have no'} sinks; this module was built with "
                f"sinks={self.sinks is not None}"
            )
        if weights.sinks is not None and weights.sinks.shape != (self.num_heads,):
            raise ValueError(
                f"weights.sinks has shape {tuple(weights.sinks.shape)}; this module has {self.num_heads} heads"
            )

    def _load_sinks(self, weights: AttentionWeights) -> None:
        """Copy ``weights.sinks`` into ``self.sinks`` (both present or both absent: see check_weights)."""
        if self.sinks is not None:
            copy_into(self.sinks, weights.sinks)

    def _export_sinks(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> torch.Tensor | None:
        """``pick(self.sinks)``, or None for a module without sinks."""
        return None if self.sinks is None else pick(self.sinks)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, t, heads * head_dim) -> (b, heads, t, head_dim): queries (h heads) or keys/values (h_kv heads)."""
        b, t, width = x.shape
        return x.view(b, t, width // self.head_dim, self.head_dim).transpose(1, 2)  # (b, heads, t, hd)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, h, t, head_dim) -> (b, t, d_out)."""
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.d_out)  # (b, t, d_out)

    def extra_repr(self) -> str:
        text = (
            f"d_in={self.d_in}, d_out={self.d_out}, num_heads={self.num_heads}, "
            f"context_length={self.context_length}, dropout={self.dropout_p}, qkv_bias={self.qkv_bias}"
        )
        if self.num_kv_heads != self.num_heads:
            text += f", num_kv_heads={self.num_kv_heads}"
        if self.window is not None:
            text += f", window={self.window}"
        if self.softcap is not None:
            text += f", softcap={self.softcap}"
        return text + (", sinks=True" if self.sinks is not None else "")


def _is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (which Python counts as integers)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_layer_options(num_heads: int, num_kv_heads: object, window: object, softcap: object, sinks: object) -> None:
    """Raise ``ValueError`` naming the value and the limit for a bad num_kv_heads, window, softcap or sinks."""
    if num_kv_heads is not None:
        if not _is_int(num_kv_heads) or num_kv_heads < 1:
            raise ValueError(f"num_kv_heads must be None or a positive integer, got {num_kv_heads!r}")
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads {num_kv_heads} must divide num_heads {num_heads} (each key/value head serves "
                "a group of query heads)"
            )
    if window is not None and (not _is_int(window) or window < 1):
        raise ValueError(
            f"window must be None or a positive integer (keys a query sees, itself included), got {window!r}"
        )
    if window is not None and window > MAX_WINDOW:
        raise ValueError(f"window {window} exceeds 2**62 (no sequence is that long)")
    if softcap is not None and (
        isinstance(softcap, bool) or not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap <= 0
    ):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    if softcap is not None and softcap > MAX_SOFTCAP:
        raise ValueError(f"softcap {softcap!r} exceeds {MAX_SOFTCAP:g} (it would overflow float32)")
    if not isinstance(sinks, bool):
        raise ValueError(f"sinks must be True or False, got {sinks!r}")
