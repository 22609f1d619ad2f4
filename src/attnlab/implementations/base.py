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
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import nn

from ..availability import missing_packages_reason
from ..weights import AttentionWeights
from .kv_cache import LayerKVCache

__all__ = ["Capabilities", "Mode", "MultiHeadAttentionBase", "copy_into"]

Mode = Literal["forward", "backward"]


@dataclass(frozen=True)
class Capabilities:
    """What an implementation can do, declared up front so that tools can skip instead of crash."""

    dropout: bool = True  # dropout on the attention weights in training mode
    needs_d_in_equal_d_out: bool = False  # e.g. nn.MultiheadAttention projects queries at width d_out
    no_backward_on: tuple[str, ...] = ()  # device types ("cpu", "cuda", "mps") without a backward pass
    devices: tuple[str, ...] | None = None  # device types it runs on; None means any
    requires: tuple[str, ...] = ()  # importable packages it needs

    def unavailable_reason(self) -> str | None:
        """Why the implementation cannot run on this machine at all, or None."""
        return missing_packages_reason(self.requires)

    def unsupported_reason(self, device_type: str, mode: Mode = "forward") -> str | None:
        """Why the implementation cannot run on ``device_type`` in ``mode``, or None when it can."""
        if (reason := self.unavailable_reason()) is not None:
            return reason
        if self.devices is not None and device_type not in self.devices:
            return f"runs only on {', '.join(self.devices)}, not {device_type}"
        if mode == "backward" and device_type in self.no_backward_on:
            return f"has no backward pass on {device_type}"
        return None


def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into a parameter in place (keeps its device, dtype and identity)."""
    with torch.no_grad():
        param.copy_(value)


class MultiHeadAttentionBase(nn.Module):
    """Causal multi-head self-attention: ``(b, t, d_in) -> (b, t, d_out)``, ``num_heads`` heads of
    ``d_out // num_heads`` features, sequences up to ``context_length`` tokens."""

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
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_in", d_in),
            ("d_out", d_out),
            ("num_heads", num_heads),
            ("context_length", context_length),
        ):
            # bool is a subclass of int in Python; True is a mistake here, not the number 1.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d_out % num_heads != 0:
            raise ValueError(f"d_out {d_out} is not divisible by num_heads {num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(f"dropout must be a real number in [0, 1), got {dropout!r} ({type(dropout).__name__})")
        if not 0.0 <= dropout < 1.0:  # also refuses nan, for which every comparison is False
            raise ValueError(f"dropout {dropout} must be in [0, 1)")
        if not isinstance(qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {qkv_bias!r}")
        name = type(self).__name__
        if dropout > 0.0 and not self.capabilities.dropout:
            raise ValueError(f"{name} does not support dropout; got dropout={dropout}, use 0.0")
        if self.capabilities.needs_d_in_equal_d_out and d_in != d_out:
            raise ValueError(f"{name} needs d_in == d_out, got d_in {d_in} and d_out {d_out}")
        self.d_in = int(d_in)
        self.d_out = int(d_out)
        self.num_heads = int(num_heads)
        self.head_dim = self.d_out // self.num_heads
        self.context_length = int(context_length)
        self.dropout_p = float(dropout)
        self.qkv_bias = qkv_bias

    # -- the interface ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.attend(x)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
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
        """Raise ``ValueError`` unless ``weights`` fit this module's d_in, d_out and qkv_bias and every
        tensor is floating point (integer, bool or complex weights would be cast silently by the copy)."""
        for field in fields(weights):
            tensor = getattr(weights, field.name)
            if tensor is not None and not tensor.is_floating_point():
                raise ValueError(f"weights.{field.name} is {tensor.dtype}; weights must be floating-point tensors")
        if (weights.d_in, weights.d_out) != (self.d_in, self.d_out):
            raise ValueError(
                f"weights are for d_in={weights.d_in}, d_out={weights.d_out}; "
                f"this module has d_in={self.d_in}, d_out={self.d_out}"
            )
        if weights.qkv_bias != self.qkv_bias:
            raise ValueError(f"weights have qkv_bias={weights.qkv_bias}; this module has qkv_bias={self.qkv_bias}")

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, t, d_out) -> (b, h, t, head_dim)."""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, t, hd)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, h, t, head_dim) -> (b, t, d_out)."""
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.d_out)  # (b, t, d_out)

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, d_out={self.d_out}, num_heads={self.num_heads}, "
            f"context_length={self.context_length}, dropout={self.dropout_p}, qkv_bias={self.qkv_bias}"
        )
