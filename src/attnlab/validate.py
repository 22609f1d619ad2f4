"""Checks shared by the validated configs: each raises ``ValueError`` naming the value and the limit.

Config dataclasses (``CheckConfig``, ``BenchConfig``) call these in ``__post_init__`` so that bad input is
refused before any work, with the same wording everywhere.
"""

from __future__ import annotations

import math

__all__ = ["MAX_SEED", "MIN_SEED", "check_positive_int", "check_seconds", "check_seed"]

#: The range ``torch.Generator.manual_seed`` accepts (a signed or unsigned 64-bit integer).
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1


def check_positive_int(name: str, value: object) -> None:
    """``value`` must be an ``int`` (not a ``bool``) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: object) -> None:
    """``seed`` must be an integer that ``torch.Generator.manual_seed`` accepts."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not MIN_SEED <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer from -2**63 to 2**64 - 1, got {seed!r}")


def check_seconds(name: str, value: object, maximum: float) -> None:
    """``value`` must be a finite number of seconds in ``(0, maximum]`` (inf or nan would never finish)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= maximum:
        raise ValueError(f"{name} must be a finite number of seconds in (0, {maximum:g}], got {value!r}")
