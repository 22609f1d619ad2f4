"""Sizes of GPT configurations, computed on the ``meta`` device (shapes only, no memory).

:func:`count_parameters` counts learned parameters; a tied output head shares the token embedding's
matrix, so it is counted once, as PyTorch's ``parameters()`` yields a shared parameter once.
:func:`model_bytes` adds the buffers an implementation keeps (e.g. a ``(context, context)`` causal mask
per layer, or per head for ``wrapper``): what building the model would allocate. The loaders call
:func:`check_fits_in_memory` with it before they build a model from a checkpoint.
"""

from __future__ import annotations

import os

import torch

from .config import GPTConfig
from .model import GPTModel

__all__ = ["check_fits_in_memory", "count_parameters", "memory_limit_bytes", "model_bytes"]


def _meta_model(config: GPTConfig, attn_impl: str) -> GPTModel:
    with torch.device("meta"):  # every tensor created here has a shape and no storage
        return GPTModel(config, attn_impl=attn_impl)


def count_parameters(config: GPTConfig | str, attn_impl: str = "sdpa") -> int:
    """Number of learned parameters of the model ``config`` describes (or the preset so named)."""
    if isinstance(config, str):
        config = GPTConfig.preset(config)
    return sum(param.numel() for param in _meta_model(config, attn_impl).parameters())


def model_bytes(config: GPTConfig, attn_impl: str = "sdpa") -> int:
    """Bytes of the parameters and buffers of ``GPTModel(config, attn_impl)`` in the default dtype.

    Building on the meta device costs time in proportion to ``n_layers``, so check that against the
    checkpoint first (see :mod:`.tensor_check`)."""
    model = _meta_model(config, attn_impl)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def memory_limit_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
        return None


def check_fits_in_memory(config: GPTConfig, attn_impl: str, max_bytes: int | None = None) -> None:
    """``ValueError`` if the model would need more than ``max_bytes`` (default: the physical memory)."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    limit = memory_limit_bytes() if max_bytes is None else max_bytes
    if limit is None:
        return
    needed = model_bytes(config, attn_impl)
    if needed > limit:
        raise ValueError(
            f"the model ({config.n_layers} layers, d_model {config.d_model}, context_length "
            f"{config.context_length}, vocab_size {config.vocab_size}) on {attn_impl!r} would need "
            f"{needed / 2**30:,.1f} GiB, more than the {limit / 2**30:,.1f} GiB allowed"
            + (" (this machine's memory)" if max_bytes is None else " (max_bytes)")
        )
