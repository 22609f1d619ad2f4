"""The bytes one decode step must read: every weight once, a few embedding rows, and the KV cache.

At batch ``b`` a step runs ``b`` new tokens through the model: each linear layer's whole weight matrix is
read once (for all rows together), an embedding table only at the looked-up rows, and the keys and values
of every cached position, per row. Arithmetic per byte is tiny, so ``bytes / memory bandwidth`` is the
fastest a step can be, and ``(bytes / time) / bandwidth`` is the fraction of that limit reached.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..quantize import tensor_bytes

__all__ = ["mean_step_bytes", "step_weight_bytes"]


def step_weight_bytes(model: nn.Module, batch: int) -> int:
    """Bytes of parameters one decode step of ``batch`` tokens reads: each parameter once (a tied weight
    is one tensor), except a table only ``nn.Embedding`` modules use, of which at most ``batch`` rows are
    read. Quantized weights count at their real storage (:func:`attnlab.quantize.tensor_bytes`)."""
    parameters: dict[int, torch.Tensor] = {}
    row_counts: dict[int, int | None] = {}  # rows of the table when only embeddings use it, else None
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            key = id(parameter)
            parameters[key] = parameter
            rows = module.num_embeddings if isinstance(module, nn.Embedding) else None
            # a tied head (a linear layer sharing the table) reads all of it: None wins
            row_counts[key] = None if rows is None or row_counts.get(key, rows) is None else rows
    total = 0
    for key, parameter in parameters.items():
        size = tensor_bytes(parameter)
        rows = row_counts[key]
        total += size if rows is None else size * min(batch, rows) // rows
    return total


def mean_step_bytes(weight_bytes: int, kv_bytes: Callable[[int], int], context: int, new_tokens: int) -> float:
    """Mean bytes read per step over ``new_tokens`` steps after a ``context``-token prompt: step ``i``
    (from 0) attends ``context + i + 1`` positions (the cache plus its own token)."""
    return weight_bytes + sum(kv_bytes(context + i + 1) for i in range(new_tokens)) / new_tokens
