"""Looking up implementations and backends by name, with clear errors and availability.

The registries themselves are :data:`attnlab.implementations.IMPLEMENTATIONS` and
:data:`attnlab.backends.BACKENDS`; the benchmark, the GPT model and the CLI go through these helpers
and never name a class.
"""

from __future__ import annotations

from .backends import BACKENDS, Backend
from .implementations import IMPLEMENTATIONS, MultiHeadAttentionBase
from .implementations.base import Mode

__all__ = [
    "available_implementations",
    "build",
    "get_backend",
    "get_implementation",
    "unsupported_reason",
]


def get_implementation(name: str) -> type[MultiHeadAttentionBase]:
    """The implementation class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; valid names: {', '.join(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[name]


def get_backend(name: str) -> Backend:
    """The attention backend registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid names: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def build(
    name: str,
    *,
    d_in: int,
    d_out: int,
    num_heads: int,
    context_length: int,
    dropout: float = 0.0,
    qkv_bias: bool = False,
) -> MultiHeadAttentionBase:
    """Construct the implementation registered as ``name`` (all take the same arguments)."""
    return get_implementation(name)(
        d_in=d_in,
        d_out=d_out,
        num_heads=num_heads,
        context_length=context_length,
        dropout=dropout,
        qkv_bias=qkv_bias,
    )


def unsupported_reason(name: str, device_type: str = "cpu", mode: Mode = "forward") -> str | None:
    """Why implementation ``name`` cannot run on ``device_type`` in ``mode`` here, or None if it can."""
    return get_implementation(name).capabilities.unsupported_reason(device_type, mode)


def available_implementations(device_type: str = "cpu", mode: Mode = "forward") -> list[str]:
    """Names of the implementations that can run on ``device_type`` in ``mode`` on this machine."""
    return [name for name in IMPLEMENTATIONS if unsupported_reason(name, device_type, mode) is None]
