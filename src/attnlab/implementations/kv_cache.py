"""One attention layer's key/value cache: what lets a decoder attend only its new tokens.

During generation, every step appends the new tokens' keys and values and attends the new queries
against everything stored so far, instead of recomputing the whole prefix. The storage is one
preallocated ``(b, h_kv, max_tokens, head_dim)`` tensor each for keys and values, filled in place, so a
step costs no ``torch.cat`` of the whole history. It is allocated on the first append, from the keys'
shape, device and dtype, so a cache never needs to be told where the model lives. ``h_kv`` is the number
of key/value heads: with grouped-query attention it is smaller than the number of query heads, and so is
the cache (``nbytes``).

The cache is for inference: it is written in place, so use it under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch

__all__ = ["LayerKVCache"]


class LayerKVCache:
    """Keys and values of up to ``max_tokens`` positions for one attention layer; ``length`` are filled."""

    def __init__(self, max_tokens: int) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.length = 0
        self._keys: torch.Tensor | None = None  # (b, h_kv, max_tokens, hd), allocated on first append
        self._values: torch.Tensor | None = None  # (b, h_kv, max_tokens, hd)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` (b, h_kv, t, hd) after the filled positions; return all stored ones,
        (b, h_kv, length, hd) each, as views of the cache (valid until the next append or truncate)."""
        if keys.dim() != 4 or keys.shape != values.shape:
            raise ValueError(
                f"keys and values must both be (batch, heads, tokens, head_dim), got {tuple(keys.shape)} "
                f"and {tuple(values.shape)}"
            )
        b, h_kv, t, hd = keys.shape
        if self._keys is None:
            self._keys = keys.new_empty(b, h_kv, self.max_tokens, hd)  # (b, h_kv, max_tokens, hd)
            self._values = values.new_empty(b, h_kv, self.max_tokens, hd)  # (b, h_kv, max_tokens, hd)
        stored_b, stored_h, _, stored_hd = self._keys.shape
        if (b, h_kv, hd) != (stored_b, stored_h, stored_hd):
            raise ValueError(
                f"keys of batch {b}, {h_kv} heads, head_dim {hd} do not fit a cache holding batch {stored_b}, "
                f"{stored_h} heads, head_dim {stored_hd}"
            )
        if (keys.dtype, keys.device) != (self._keys.dtype, self._keys.device):
            raise ValueError(
                f"keys are {keys.dtype} on {keys.device}; this cache holds {self._keys.dtype} on {self._keys.device}"
            )
        if self.length + t > self.max_tokens:
            raise ValueError(
                f"KV cache holds {self.length} tokens; adding {t} exceeds its max_tokens {self.max_tokens}"
            )
        end = self.length + t
        self._keys[:, :, self.length : end] = keys  # (b, h_kv, t, hd) into positions length..end
        self._values[:, :, self.length : end] = values  # (b, h_kv, t, hd)
        self.length = end
        return self._keys[:, :, :end], self._values[:, :, :end]  # (b, h_kv, length, hd) each

    @property
    def nbytes(self) -> int:
        """Bytes of key and value storage held (all ``max_tokens`` positions; 0 before the first append)."""
        return 0 if self._keys is None else self._keys.nbytes + self._values.nbytes

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (0 empties the cache but keeps its storage)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of length {self.length} to {length}")
        self.length = length

    def __repr__(self) -> str:
        return f"LayerKVCache(length={self.length}, max_tokens={self.max_tokens})"
