"""Looking up implementations and backends by name, with clear errors and availability.

The registries themselves are :data:`attnlab.implementations.IMPLEMENTATIONS` and
:data:`attnlab.backends.BACKENDS`; the benchmark, the GPT model and the CLI go through these helpers
and never name a class.
"""

from __future__ import annotations

from collections.abc import Iterable

from .backends import BACKENDS, Backend
from .implementations import IMPLEMENTATIONS, MultiHeadAttentionBase
from .implementations.base import FEATURE_OPTIONS, Mode, UnsupportedFeatureError

__all__ = [
    "available_implementations",
    "build",
    "check_selection",
    "get_backend",
    "get_implementation",
    "implementations_with",
    "unsupported_reason",
]


def get_implementation(name: str) -> type[MultiHeadAttentionBase]:
    """The implementation class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; valid names: {', '.join(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[name]


def check_selection(impls: tuple[str, ...] | None) -> None:
    """Raise ``ValueError`` unless ``impls`` (None: every registered implementation) names at least one
    registered implementation, none twice: what every tool that takes a selection checks first."""
    if impls is None:
        return
    if not impls:
        raise ValueError("no implementation selected (impls is empty); name at least one, e.g. sdpa (None: all)")
    for name in impls:
        get_implementation(name)  # unknown names: ValueError listing the valid ones
    if len(set(impls)) != len(impls):
        raise ValueError(f"implementation names repeat: {', '.join(impls)}")


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
    num_kv_heads: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: bool = False,
) -> MultiHeadAttentionBase:
    """Construct the implementation registered as ``name`` (all take the same arguments).

    An option the implementation cannot do is a ``ValueError`` naming it and the implementations that can.
    """
    cls = get_implementation(name)
    try:
        return cls(
            d_in=d_in,
            d_out=d_out,
            num_heads=num_heads,
            context_length=context_length,
            dropout=dropout,
            qkv_bias=qkv_bias,
            num_kv_heads=num_kv_heads,
            window=window,
            softcap=softcap,
            sinks=sinks,
        )
    except UnsupportedFeatureError as error:
        able = ", ".join(implementations_with(error.feature)) or "none"
        raise ValueError(
            f"{name} does not support {error.option}; got {error.option}={error.value!r}; implementations that do: "
            f"{able}"
        ) from None


def implementations_with(feature: str) -> list[str]:
    """Names of the implementations whose design can do ``feature`` (a key of ``FEATURE_OPTIONS``: "gqa",
    "window", "softcap", "sinks", "dropout"), wherever they run."""
    if feature not in FEATURE_OPTIONS:
        raise ValueError(f"unknown implementation feature {feature!r}; known: {', '.join(FEATURE_OPTIONS)}")
    return [name for name, cls in IMPLEMENTATIONS.items() if feature in cls.capabilities.features]


def unsupported_reason(
    name: str, device_type: str = "cpu", mode: Mode = "forward", features: Iterable[str] = ()
) -> str | None:
    """Why implementation ``name`` cannot run on ``device_type`` in ``mode`` with ``features`` (keys of
    ``FEATURE_OPTIONS``, e.g. from :func:`~attnlab.implementations.base.requested_features`) here, or None."""
    return get_implementation(name).capabilities.unsupported_reason(device_type, mode, features)


def available_implementations(
    device_type: str = "cpu", mode: Mode = "forward", features: Iterable[str] = ()
) -> list[str]:
    """Names of the implementations that can run on ``device_type`` in ``mode`` with ``features`` here."""
    features = tuple(features)
    return [name for name in IMPLEMENTATIONS if unsupported_reason(name, device_type, mode, features) is None]
