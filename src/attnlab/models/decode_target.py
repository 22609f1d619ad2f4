""":class:`Decoder` as the decode benchmark drives a model: prefill, one step, rewind, and its KV bytes.

The same interface as :class:`attnlab.gpt.decode_target.GPTDecodeTarget` (see
:class:`attnlab.bench.decode.DecodeTarget`). ``compile=True`` decodes the way ``generate(..., compile=True)``
does: a static cache (the same shapes at every step, rows read with ``kv_lens``) and the one-token step
compiled once with ``torch.compile`` (``mode="reduce-overhead"``, CUDA graphs, on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cache import DecoderCache
from .decoder import Decoder

__all__ = ["DecoderDecodeTarget"]


class DecoderDecodeTarget:
    """Greedy decoding of ``model`` with a cache of up to ``max_tokens`` positions (``compile``: static cache,
    compiled step). Every layer must keep all positions (no sliding window shorter than ``max_tokens``: a
    rolling cache cannot rewind) and keep keys and values (not MLA's latent)."""

    def __init__(self, model: Decoder, max_tokens: int, *, compile: bool = False) -> None:
        config = model.config
        if config.mla is not None:
            raise ValueError("the decode benchmark does not count MLA's latent cache; use a key/value-cache model")
        windows = [window for window in (config.layer_windows or ()) if window is not None and window < max_tokens]
        if windows:
            raise ValueError(
                f"a sliding window of {min(windows)} positions is shorter than the {max_tokens} decoded positions: "
                "its rolling cache cannot rewind between timed calls"
            )
        self.module = model
        self.max_tokens = max_tokens
        self.compile = compile
        self._cache: DecoderCache | None = None
        self._step: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def cache(self) -> DecoderCache:
        if self._cache is None:
            raise ValueError("no KV cache yet: call prefill(prompt) first")
        return self._cache

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run ``prompt`` (b, t) into a fresh cache; the logits of its last position (b, vocab)."""
        cache = self.module.new_cache(prompt.shape[0], self.max_tokens, static=self.compile)
        logits = self.module(prompt, cache)[:, -1]  # (b, vocab)
        model = self.module

        def step(token: torch.Tensor) -> torch.Tensor:
            return model(token, cache)[:, -1]  # (b, vocab)

        if self.compile:
            mode = "reduce-overhead" if prompt.device.type == "cuda" else None
            step = torch.compile(step, mode=mode, dynamic=False)
        self._cache, self._step = cache, step
        return logits

    @torch.no_grad()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Run ``token`` (b, 1) against the cache (and append it); its logits (b, vocab)."""
        if self._step is None:
            raise ValueError("no KV cache yet: call prefill(prompt) first")
        return self._step(token)

    def rewind(self, length: int) -> None:
        """Forget every cached position from ``length`` on."""
        self.cache.rewind(length)

    def kv_bytes(self, batch: int, length: int) -> int:
        """Bytes of keys and values ``length`` positions of ``batch`` rows hold: per layer, keys and values of
        (batch, key/value heads, length, head_dim) in the activations' dtype (the embeddings', never quantized)."""
        config = self.module.config
        element_size = self.module.tok_emb.weight.element_size()
        return 2 * config.n_layers * batch * config.num_kv_heads * length * config.head_dim * element_size
