"""The one parameter set that every multi-head implementation can load and export.

Each implementation stores its parameters its own way (per-head linears, one fused linear, einsum
matrices, ``nn.MultiheadAttention``'s packed ``in_proj_weight``); :class:`AttentionWeights` is the
common currency between them. Giving two implementations the same ``AttentionWeights`` gives them
the same function, which is how attnlab proves they compute the same thing.

Grouped-query attention (GQA) and multi-query attention (MQA) need no new layout: the key and value
projections simply have fewer output features, ``d_kv = num_kv_heads * head_dim`` instead of ``d_out``.
Attention sinks are one extra learned logit per query head (``sinks``, shape ``(num_heads,)``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

__all__ = ["AttentionWeights"]

_REQUIRED = ("W_query", "W_key", "W_value", "W_out", "b_out")


@dataclass
class AttentionWeights:
    """Query, key, value and output projections in ``nn.Linear`` layout ``(out_features, in_features)``.

    ``W_query`` is ``(d_out, d_in)``; ``W_key`` and ``W_value`` are ``(d_kv, d_in)``, where ``d_kv`` is
    ``d_out`` for ordinary multi-head attention and ``num_kv_heads * head_dim`` for grouped-query attention
    (so ``d_out`` is a multiple of ``d_kv``). ``W_out`` is ``(d_out, d_out)`` and ``b_out`` is ``(d_out,)``.
    The biases ``b_query`` ``(d_out,)``, ``b_key`` and ``b_value`` ``(d_kv,)`` are given when the module has
    ``qkv_bias``, else ``None``. ``sinks`` ``(num_heads,)`` holds one attention-sink logit per query head, or
    is ``None`` for attention without sinks.

    Every tensor must be floating point, and all of them must share one dtype and one device.
    """

    W_query: torch.Tensor
    W_key: torch.Tensor
    W_value: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor
    b_query: torch.Tensor | None = None
    b_key: torch.Tensor | None = None
    b_value: torch.Tensor | None = None
    sinks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._check_tensors()
        if self.W_query.dim() != 2:
            raise ValueError(f"W_query must be 2-D (d_out, d_in), got shape {tuple(self.W_query.shape)}")
        d_out, d_in = self.W_query.shape
        if self.W_key.dim() != 2 or self.W_key.shape[1] != d_in:
            raise ValueError(
                f"W_key has shape {tuple(self.W_key.shape)}, expected (d_kv, {d_in}): 2-D with the d_in of W_query"
            )
        d_kv = self.W_key.shape[0]
        if self.W_value.shape != self.W_key.shape:
            raise ValueError(
                f"W_value has shape {tuple(self.W_value.shape)}, expected {tuple(self.W_key.shape)} like W_key"
            )
        if d_kv < 1 or d_out % d_kv != 0:
            raise ValueError(
                f"the key/value width d_kv={d_kv} (rows of W_key) must be at least 1 and divide d_out={d_out}"
                " (num_heads must be a multiple of num_kv_heads)"
            )
        if self.W_out.shape != (d_out, d_out):
            raise ValueError(f"W_out has shape {tuple(self.W_out.shape)}, expected {(d_out, d_out)}")
        if self.b_out.shape != (d_out,):
            raise ValueError(f"b_out has shape {tuple(self.b_out.shape)}, expected {(d_out,)}")
        biases = [self.b_query, self.b_key, self.b_value]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("b_query, b_key and b_value must be all given or all None")
        for name, b, width in (
            ("b_query", self.b_query, d_out),
            ("b_key", self.b_key, d_kv),
            ("b_value", self.b_value, d_kv),
        ):
            if b is not None and b.shape != (width,):
                raise ValueError(f"{name} has shape {tuple(b.shape)}, expected {(width,)}")
        if self.sinks is not None:
            _check_sinks(self.sinks, d_out, d_kv)

    def _check_tensors(self) -> None:
        """Every present field is a floating-point tensor; all share the dtype and device of ``W_query``."""
        for name in _REQUIRED:
            if getattr(self, name) is None:
                raise ValueError(f"{name} is required, got None")
        present = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]
        for name, tensor in present:
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        first_name, first = present[0]
        for name, tensor in present[1:]:
            if tensor.dtype != first.dtype:
                raise ValueError(f"{name} has dtype {tensor.dtype} but {first_name} has {first.dtype}: mixed dtypes")
            if tensor.device != first.device:
                raise ValueError(
                    f"{name} is on device {tensor.device} but {first_name} is on {first.device}: mixed devices"
                )

    @property
    def d_in(self) -> int:
        """Width of the input features."""
        return self.W_query.shape[1]

    @property
    def d_out(self) -> int:
        """Width of the queries, of the attention output and of the module output (``num_heads * head_dim``)."""
        return self.W_query.shape[0]

    @property
    def d_kv(self) -> int:
        """Width of the keys and values (``num_kv_heads * head_dim``); equals ``d_out`` without GQA."""
        return self.W_key.shape[0]

    @property
    def qkv_bias(self) -> bool:
        """Whether the query, key and value projections have biases."""
        return self.b_query is not None

    @property
    def has_sinks(self) -> bool:
        """Whether the weights carry attention-sink logits."""
        return self.sinks is not None

    @classmethod
    def random(
        cls,
        d_in: int,
        d_out: int,
        qkv_bias: bool = False,
        *,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        sinks: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> AttentionWeights:
        """Random weights with the scale of ``nn.Linear``'s default initialisation (uniform, 1/sqrt(fan_in)).

        ``num_kv_heads`` (a divisor of ``num_heads``) gives grouped-query weights with
        ``d_kv = num_kv_heads * d_out / num_heads``; ``sinks=True`` adds ``num_heads`` sink logits drawn from a
        standard normal. Both need ``num_heads``. The tensors are drawn in field order, so the defaults draw
        exactly what earlier versions drew from the same generator, and the sinks are drawn last.
        """
        for name, value in (("d_in", d_in), ("d_out", d_out)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, flag in (("qkv_bias", qkv_bias), ("sinks", sinks)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        d_kv = d_out
        if num_heads is None:
            if num_kv_heads is not None or sinks:
                raise ValueError("num_heads is required when num_kv_heads is given or sinks=True")
        else:
            if not _is_int(num_heads) or num_heads < 1 or d_out % num_heads != 0:
                raise ValueError(f"num_heads must be an integer >= 1 dividing d_out={d_out}, got {num_heads!r}")
            if num_kv_heads is not None:
                if not _is_int(num_kv_heads) or num_kv_heads < 1 or num_heads % num_kv_heads != 0:
                    raise ValueError(
                        f"num_kv_heads must be an integer >= 1 dividing num_heads={num_heads}, got {num_kv_heads!r}"
                    )
                d_kv = num_kv_heads * (d_out // num_heads)

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = fan_in**-0.5
            return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * bound

        # Keyword arguments are evaluated left to right: this is the draw order.
        return cls(
            W_query=uniform(d_out, d_in, fan_in=d_in),
            W_key=uniform(d_kv, d_in, fan_in=d_in),
            W_value=uniform(d_kv, d_in, fan_in=d_in),
            W_out=uniform(d_out, d_out, fan_in=d_out),
            b_out=uniform(d_out, fan_in=d_out),
            b_query=uniform(d_out, fan_in=d_in) if qkv_bias else None,
            b_key=uniform(d_kv, fan_in=d_in) if qkv_bias else None,
            b_value=uniform(d_kv, fan_in=d_in) if qkv_bias else None,
            sinks=torch.randn(num_heads, generator=generator, dtype=dtype) if sinks else None,  # (num_heads,)
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AttentionWeights:
        """A copy with every tensor moved to ``device`` and/or cast to ``dtype``."""
        return self.map_tensors(lambda t: t.to(device=device, dtype=dtype))

    def detached(self) -> AttentionWeights:
        """A copy of the tensors, detached from any autograd graph."""
        return self.map_tensors(lambda t: t.detach().clone())

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> AttentionWeights:
        """A new AttentionWeights with ``fn`` applied to every tensor that is present (``sinks`` included)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return AttentionWeights(**{name: None if t is None else fn(t) for name, t in values.items()})


def _is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (which Python counts as integers)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_sinks(sinks: torch.Tensor, d_out: int, d_kv: int) -> None:
    """``sinks`` is (num_heads,) with num_heads dividing d_out into head_dim, and head_dim dividing d_kv."""
    if sinks.dim() != 1:
        raise ValueError(f"sinks must be 1-D (num_heads,), got shape {tuple(sinks.shape)}")
    num_heads = sinks.shape[0]
    if num_heads < 1 or d_out % num_heads != 0:
        raise ValueError(f"sinks has {num_heads} entries (num_heads), which must divide d_out={d_out}")
    head_dim = d_out // num_heads
    if d_kv % head_dim != 0:
        raise ValueError(
            f"sinks has {num_heads} entries, so head_dim = d_out/num_heads = {head_dim}, "
            f"which does not divide the key/value width d_kv={d_kv}"
        )
