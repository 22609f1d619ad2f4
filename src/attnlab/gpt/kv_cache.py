"""The model's KV cache: one :class:`~attnlab.implementations.kv_cache.LayerKVCache` per transformer block.

Its ``length`` is the number of positions already processed, which is also where the next tokens'
position embeddings start. Only implementations with an ``attend_cached`` method can use it; the
others can still generate, without a cache (``use_cache=False``), recomputing the prefix each step.
"""

from __future__ import annotations

from ..implementations import IMPLEMENTATIONS
from ..implementations.kv_cache import LayerKVCache
from ..registry import get_implementation

__all__ = ["KVCache", "LayerKVCache", "check_kv_cache_support", "kv_cache_implementations"]


class KVCache:
    """Keys and values of up to ``max_tokens`` positions for each of ``n_layers`` blocks."""

    def __init__(self, n_layers: int, max_tokens: int) -> None:
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.layers = [LayerKVCache(max_tokens) for _ in range(n_layers)]
        self.max_tokens = max_tokens

    @property
    def length(self) -> int:
        """Positions stored so far (every layer holds the same number)."""
        return self.layers[0].length

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on, in every layer (e.g. to re-run decoding from a prompt)."""
        for layer in self.layers:
            layer.truncate(length)

    def __repr__(self) -> str:
        return f"KVCache(n_layers={len(self.layers)}, length={self.length}, max_tokens={self.max_tokens})"


def kv_cache_implementations() -> list[str]:
    """Names of the registered implementations that have a KV-cache path."""
    return [name for name, cls in IMPLEMENTATIONS.items() if cls.supports_kv_cache()]


def check_kv_cache_support(attn_impl: str) -> None:
    """Raise ``ValueError`` naming the alternatives unless ``attn_impl`` can decode with a KV cache."""
    if not get_implementation(attn_impl).supports_kv_cache():
        raise ValueError(
            f"attention implementation {attn_impl!r} has no KV-cache path; generate with use_cache=False "
            f"(CLI: --no-cache) or use one of: {', '.join(kv_cache_implementations())}"
        )
