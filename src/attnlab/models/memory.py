"""How many bytes a model's KV cache takes, counted from the code that allocates it.

A decoder's cache is one buffer pair per layer, and its size depends on the layer: a full-attention layer
keeps every position (``(b, h_kv, context, head_dim)`` keys and as much for values), a sliding-window
layer keeps only its window (plus one spare slot that takes the writes of padding tokens, see
:class:`~attnlab.models.cache.RollingLayerCache`), a latent (MLA) layer keeps one compressed vector per
position. Rather than restating those rules in a formula that could drift from the code,
:func:`kv_cache_bytes` builds the model on the ``meta`` device (shapes without memory), opens a cache with
:meth:`~attnlab.models.Decoder.new_cache`, runs one decoding step on meta tensors, so that each layer cache
allocates its buffers exactly as it would for real, and reads each layer cache's ``nbytes``. Nothing is
allocated; a 70-billion-parameter config is counted in well under a second.

The step runs on the ``naive`` backend, which does every attention feature and runs on meta tensors, and
with a dense feed-forward in place of a mixture of experts (whose routing has no meta kernel): neither the
backend nor the feed-forward changes what a cache allocates.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..gpt.files import is_file, read_json_object
from .cache import FullLayerCache, LayerCache, RollingLayerCache
from .config import DecoderConfig
from .decoder import Decoder
from .hf import read_config
from .hf.configs import config_from_hf

__all__ = ["KV_DTYPES", "KVCacheReport", "KVCacheRow", "kv_cache_bytes", "read_model_config"]

#: The cache dtypes by name (what ``attnlab memory --dtype`` takes).
KV_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: The backend of the counting step (every feature, runs on meta tensors).
_COUNTING_BACKEND = "naive"


@dataclass(frozen=True)
class KVCacheRow:
    """The caches of the ``layers`` layers of one kind: ``kind`` is ``full``, ``sliding`` (``window`` set) or
    ``latent``; each holds ``slots`` positions per sequence; ``nbytes`` all of them together, whole batch."""

    kind: str
    window: int | None
    layers: int
    slots: int
    nbytes: int
    batch: int

    @property
    def label(self) -> str:
        return {"full": "full attention", "latent": "latent (MLA)"}.get(self.kind, f"sliding window {self.window}")

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position of one sequence takes in these layers together."""
        return self.nbytes // (self.batch * self.slots)


@dataclass(frozen=True)
class KVCacheReport:
    """The KV cache of ``batch`` sequences of ``context`` positions in ``dtype``: one row per kind of layer."""

    rows: tuple[KVCacheRow, ...]
    context: int
    batch: int
    dtype: torch.dtype

    @property
    def total_bytes(self) -> int:
        return sum(row.nbytes for row in self.rows)

    @property
    def bytes_per_token(self) -> float:
        """Total bytes per position of the context, per sequence (sliding layers' fixed size spread over it)."""
        return self.total_bytes / (self.batch * self.context)


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def read_model_config(path: str | Path) -> DecoderConfig:
    """The config of a Hugging Face checkpoint directory, or of a ``config.json`` file given directly."""
    path = Path(path)
    if is_file(path):
        return config_from_hf(read_json_object(path), str(path))
    return read_config(path)  # a directory (or a clear error naming what is missing)


def _kind(layer_cache: LayerCache, context: int) -> tuple[str, int | None, int]:
    """(kind, window, positions held per sequence) of one layer cache."""
    if isinstance(layer_cache, RollingLayerCache):
        return "sliding", layer_cache.window, layer_cache.window + 1  # + the spare slot for padding writes
    if isinstance(layer_cache, FullLayerCache):
        return "full", None, layer_cache.max_tokens
    name = type(layer_cache).__name__.removesuffix("LayerCache").lower() or "other"
    return name, None, getattr(layer_cache, "max_tokens", context)


def kv_cache_bytes(
    config: DecoderConfig, context: int | None = None, batch: int = 1, dtype: torch.dtype = torch.bfloat16
) -> KVCacheReport:
    """The :class:`KVCacheReport` of ``config``'s cache for ``batch`` sequences of ``context`` positions
    (default: the model's ``context_length``).

    The numbers are the ``nbytes`` of the buffers the layer caches allocate (on the meta device: no memory
    is used), grouped by kind of layer cache and window, in layer order of first appearance.
    """
    if not isinstance(config, DecoderConfig):
        raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")
    context = config.context_length if context is None else context
    _check_positive("context", context)
    _check_positive("batch", batch)
    if context > config.context_length:
        raise ValueError(f"context {context} exceeds the model's context_length {config.context_length}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if config.moe is not None:  # the feed-forward never touches the cache; routing (bincount) has no meta kernel
        config = dataclasses.replace(config, ffn="swiglu", moe=None)
    with torch.device("meta"):
        model = Decoder(config, _COUNTING_BACKEND).to(dtype)
    cache = model.new_cache(batch, context)
    idx = torch.zeros(batch, 1, dtype=torch.int64, device="meta")  # (b, 1): one decoding step
    with torch.no_grad():
        model(idx, cache)  # each layer cache allocates its buffers (meta: shapes and nbytes, no memory)
    layers: Counter[tuple[str, int | None, int]] = Counter()
    nbytes: Counter[tuple[str, int | None, int]] = Counter()
    for layer_cache in cache.layers:
        key = _kind(layer_cache, context)
        layers[key] += 1
        nbytes[key] += layer_cache.nbytes
    rows = tuple(
        KVCacheRow(kind, window, layers[(kind, window, slots)], slots, nbytes[(kind, window, slots)], batch)
        for kind, window, slots in layers
    )
    return KVCacheReport(rows=rows, context=context, batch=batch, dtype=dtype)
