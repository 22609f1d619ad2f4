""":class:`GPTModel` as the decode benchmark drives a model: prefill, one step, rewind, and its KV bytes.

The decode bench (:mod:`attnlab.bench.decode_run`) knows no model: it asks for ``prefill(prompt)``
(a fresh cache, the last position's logits), ``step(token)`` (one token against the cache), ``rewind(n)``
(forget every position from ``n`` on, so each timed call decodes from the same prompt) and
``kv_bytes(batch, length)``, the key/value bytes ``length`` cached positions hold.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCache, check_kv_cache_support
from .model import GPTModel

__all__ = ["GPTDecodeTarget"]


class GPTDecodeTarget:
    """Greedy decoding of ``model`` with its KV cache, sized for up to ``max_tokens`` positions."""

    def __init__(self, model: GPTModel, max_tokens: int) -> None:
        check_kv_cache_support(model.attn_impl)
        self.module = model
        self.max_tokens = max_tokens
        self._cache: KVCache | None = None

    @property
    def cache(self) -> KVCache:
        if self._cache is None:
            raise ValueError("no KV cache yet: call prefill(prompt) first")
        return self._cache

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run ``prompt`` (b, t) into a fresh cache; the logits of its last position (b, vocab)."""
        self._cache = self.module.new_kv_cache(self.max_tokens)
        return self.module(prompt, self._cache)[:, -1]  # (b, vocab)

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Run ``token`` (b, 1) against the cache (and append it); its logits (b, vocab)."""
        return self.module(token, self.cache)[:, -1]  # (b, vocab)

    def rewind(self, length: int) -> None:
        """Forget every cached position from ``length`` on."""
        self.cache.truncate(length)

    def kv_bytes(self, batch: int, length: int) -> int:
        """Bytes of keys and values ``length`` positions of ``batch`` rows hold: per layer, keys and values of
        (batch, heads, length, head_dim) in the activations' dtype (the embeddings', never quantized)."""
        config = self.module.config
        element_size = self.module.tok_emb.weight.element_size()
        return 2 * config.n_layers * batch * config.n_heads * length * config.head_dim * element_size
