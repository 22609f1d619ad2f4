"""Which attention the benchmark times: plain multi-head attention or a modern variant of it.

:class:`AttentionVariant` holds the layer options of today's models (grouped key/value heads, a sliding
window, softcapping, sinks) and sequence packing. Every case of a run uses the same variant; its FLOPs count
only the query/key pairs the variant lets meet (see :mod:`attnlab.bench.flops`), so a sweep over the
sequence length shows a window's O(t * w) cost, and packing's sum of t_i^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from ..backends.spec import MAX_SOFTCAP, MAX_WINDOW
from ..implementations.base import requested_features

__all__ = ["PLAIN", "AttentionVariant"]


def _positive_int(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class AttentionVariant:
    """Layer options (``num_kv_heads``, ``window``, ``softcap``, ``sinks``) plus ``packed_len``: pack
    sequences of ``packed_len`` tokens into each row (the last one shorter if it does not divide t)."""

    num_kv_heads: int | None = None
    window: int | None = None
    softcap: float | None = None
    sinks: bool = False
    packed_len: int | None = None

    def __post_init__(self) -> None:
        _positive_int("num_kv_heads", self.num_kv_heads)
        _positive_int("window", self.window)
        if self.window is not None and self.window > MAX_WINDOW:
            raise ValueError(f"window {self.window} exceeds 2**62")
        _positive_int("packed_len", self.packed_len)
        if self.softcap is not None and (
            not isinstance(self.softcap, Real)
            or isinstance(self.softcap, bool)
            or not math.isfinite(self.softcap)
            or self.softcap <= 0
        ):
            raise ValueError(f"softcap must be a finite number > 0, got {self.softcap!r}")
        if self.softcap is not None and self.softcap > MAX_SOFTCAP:
            raise ValueError(f"softcap {self.softcap!r} exceeds {MAX_SOFTCAP:g} (it would overflow float32)")
        if not isinstance(self.sinks, bool):
            raise ValueError(f"sinks must be True or False, got {self.sinks!r}")

    def check(self, num_heads: int) -> None:
        """Raise ``ValueError`` unless the variant fits ``num_heads`` heads."""
        if self.num_kv_heads is not None and num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads {num_heads}")

    @property
    def is_plain(self) -> bool:
        return self == AttentionVariant()

    def module_options(self) -> dict[str, Any]:
        """The constructor keywords of a multi-head implementation."""
        return {"num_kv_heads": self.num_kv_heads, "window": self.window, "softcap": self.softcap, "sinks": self.sinks}

    def features(self, num_heads: int) -> tuple[str, ...]:
        """The implementation features the layer options ask for (packing is checked separately)."""
        return requested_features(num_heads=num_heads, **self.module_options())

    def seq_lens(self, seq_len: int) -> tuple[int, ...] | None:
        """The packed lengths of a row of ``seq_len`` tokens, or None without packing."""
        if self.packed_len is None:
            return None
        full, rest = divmod(seq_len, self.packed_len)
        return (self.packed_len,) * full + ((rest,) if rest else ())

    def describe(self) -> str:
        """A short label, e.g. ``"kv_heads=2, window=256, packed_len=512"`` (``"plain"`` with no option)."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("kv_heads", self.num_kv_heads),
                ("window", self.window),
                ("softcap", self.softcap),
                ("packed_len", self.packed_len),
            )
            if value is not None
        ]
        parts += ["sinks"] if self.sinks else []
        return ", ".join(parts) or "plain"


#: No option: the multi-head attention of GPT-2 (the default of every benchmark).
PLAIN = AttentionVariant()
