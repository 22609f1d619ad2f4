"""Generation options as a validated frozen dataclass, checked before any model is loaded.

``GenerationOptions(max_new_tokens=20, temperature=0.8, top_k=40)`` refuses bad values at construction
(a ``ValueError`` naming the value and the limit), so a caller such as ``attnlab generate`` finds a
mistake in its arguments in milliseconds, not after loading a checkpoint. What depends on the model
(the context length, the vocabulary for ``eos_id``) is checked by :func:`.generate.iter_generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..bench.devices import resolve_device
from ..registry import get_implementation, unsupported_reason
from .kv_cache import check_kv_cache_support

__all__ = ["MAX_SEED", "GenerationOptions", "check_runnable", "resolve_generation_device"]

#: torch.Generator.manual_seed takes seeds in [0, 2**64).
MAX_SEED = 2**64 - 1


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationOptions:
    """How to continue a prompt: up to ``max_new_tokens`` tokens, greedy when ``temperature`` is 0, else
    sampled from the ``top_k`` most likely (all when None); ``eos_id`` ends a row; ``seed`` seeds sampling."""

    max_new_tokens: int = 30
    temperature: float = 0.0
    top_k: int | None = None
    eos_id: int | None = None
    use_cache: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {_show(self.max_new_tokens)}")
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {_show(temperature)}")
        if not (math.isfinite(temperature) and temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0 (0 is greedy) and finite, got {temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {_show(self.top_k)}")
        if self.eos_id is not None and (not _is_int(self.eos_id) or self.eos_id < 0):
            raise ValueError(f"eos_id must be a token id (an integer >= 0) or None, got {_show(self.eos_id)}")
        if not isinstance(self.use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {_show(self.use_cache)}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {_show(self.seed)}")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`.generate.iter_generate` (all but the generator)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "eos_id": self.eos_id,
            "use_cache": self.use_cache,
        }

    def make_generator(self, device: torch.device) -> torch.Generator:
        """A random generator on ``device`` seeded with ``seed`` (used only when sampling)."""
        return torch.Generator(device=device).manual_seed(self.seed)


def resolve_generation_device(name: str) -> torch.device:
    """The device called ``name`` (``auto``, ``cpu``, ``cuda:1``, ...); ``ValueError`` when it is absent or
    the name is not a device name."""
    try:
        return resolve_device(name)
    except RuntimeError as error:  # torch.device("xyz"): not a device string
        raise ValueError(f"unknown device {_show(name)}; use auto, cpu, cuda, cuda:N or mps") from error


def check_runnable(attn_impl: str, device: torch.device, use_cache: bool) -> None:
    """``ValueError`` unless ``attn_impl`` exists, runs on ``device``, and has a KV cache if ``use_cache``."""
    get_implementation(attn_impl)
    reason = unsupported_reason(attn_impl, device.type, "forward")
    if reason is not None:
        raise ValueError(f"attention implementation {attn_impl!r} cannot run here: it {reason}")
    if use_cache:
        check_kv_cache_support(attn_impl)
