"""attnlab: attention mechanisms for large language models, built from scratch in PyTorch.

- :mod:`attnlab.chapter3`: the chapter's steps, reproducing the book's printed numbers;
- :data:`IMPLEMENTATIONS`: every multi-head attention implementation, selected by name, one interface;
- :data:`BACKENDS`: core attention functions on (b, h, t, d) tensors;
- :class:`AttentionWeights`: the one parameter set any implementation can load and export.
"""

from __future__ import annotations

from .backends import BACKENDS
from .implementations import IMPLEMENTATIONS
from .registry import available_implementations, build, get_backend, get_implementation
from .weights import AttentionWeights

__all__ = [
    "BACKENDS",
    "IMPLEMENTATIONS",
    "AttentionWeights",
    "available_implementations",
    "build",
    "get_backend",
    "get_implementation",
]

__version__ = "0.1.0"
