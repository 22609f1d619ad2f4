"""Parameter counts of GPT configurations, computed on the ``meta`` device (shapes only, no memory).

A tied output head shares the token embedding's matrix, so it is counted once, as PyTorch's
``parameters()`` yields a shared parameter once.
"""

from __future__ import annotations

import torch

from .config import GPTConfig
from .model import GPTModel

__all__ = ["count_parameters"]


def count_parameters(config: GPTConfig | str, attn_impl: str = "sdpa") -> int:
    """Number of learned parameters of the model ``config`` describes (or the preset so named)."""
    if isinstance(config, str):
        config = GPTConfig.preset(config)
    with torch.device("meta"):  # every tensor created here has a shape and no storage
        model = GPTModel(config, attn_impl=attn_impl)
    return sum(param.numel() for param in model.parameters())
