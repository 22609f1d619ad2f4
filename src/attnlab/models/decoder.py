"""The decoder: token ids in, next-token logits out, for every architecture of :mod:`attnlab.models`.

``Decoder(config, attn_impl="sdpa")``: the token embedding (times ``sqrt(d_model)`` for Gemma), learned
position embeddings (GPT-2) or rotary ones computed once per forward pass and shared by the layers,
``n_layers`` :class:`~.block.DecoderBlock`, a final norm, and the output head (tied to the embedding or
its own), with Gemma 2's final logit softcap. ``attn_impl`` names the attention backend of every layer.

With a cache (:meth:`Decoder.new_cache`), ``forward`` takes only the new tokens: their positions start at
each row's cached length. Prompts of different lengths go in right-padded with ``input_lens``, the number
of real tokens of each row (see :mod:`.generate`, which turns left-padded batches into that form).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import CoreAttention
from .block import DecoderBlock
from .cache import DecoderCache
from .config import DecoderConfig
from .norms import make_norm
from .rope import RotaryEmbedding

__all__ = ["Decoder"]


class Decoder(nn.Module):
    """Token ids (b, t) -> logits (b, t, vocab_size) for the architecture described by ``config``."""

    def __init__(self, config: DecoderConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = config
        self.attn_impl = attn_impl
        self.eos_token_ids: tuple[int, ...] = ()  # end-of-sequence ids of a loaded checkpoint (generate stops there)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model) if config.positions == "learned" else None
        self.rotary: RotaryEmbedding | None = None
        self.rotary_local: RotaryEmbedding | None = None
        if config.positions == "rope":
            rotary_dim = config.mla.qk_rope_head_dim if config.mla is not None else config.head_dim
            self.rotary = RotaryEmbedding(config.rope, rotary_dim)
            if config.rope_local is not None:
                self.rotary_local = RotaryEmbedding(config.rope_local, rotary_dim)
        self.blocks = nn.ModuleList([DecoderBlock(config, layer, attn_impl) for layer in range(config.n_layers)])
        self.final_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix, used twice

    # -- caches and hooks ----------------------------------------------------------------------------

    def new_cache(self, batch: int, max_tokens: int | None = None, *, static: bool = False) -> DecoderCache:
        """An empty cache for ``batch`` rows of up to ``max_tokens`` positions (default: context_length).
        ``static``: fixed shapes in every decode step (for ``torch.compile``), rows always read with ``kv_lens``."""
        max_tokens = self.config.context_length if max_tokens is None else max_tokens
        for name, value in (("batch", batch), ("max_tokens", max_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_tokens > self.config.context_length:
            raise ValueError(f"max_tokens {max_tokens} exceeds the model's context_length {self.config.context_length}")
        layers = [block.attn.new_layer_cache(batch, max_tokens, static) for block in self.blocks]
        return DecoderCache(layers, batch, max_tokens, self.tok_emb.weight.device, static)

    def set_core_attention(self, fn: CoreAttention | None) -> None:
        """Every layer calls ``fn(q, k, v, spec)`` instead of its backend (None: the backend again)."""
        for block in self.blocks:
            block.attn.set_core_attention(fn)

    # -- the forward pass ----------------------------------------------------------------------------

    def _check_tokens(self, idx: torch.Tensor) -> None:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int32, torch.int64):
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be 2-D integer token ids (batch, tokens), got {shape}")
        if idx.shape[1] < 1:
            raise ValueError("sequence length 0: the input needs at least one token")
        if torch.compiler.is_compiling() or idx.is_meta:
            return  # checked before compiling (a data-dependent check breaks the graph); meta tensors hold no values
        lowest, highest = int(idx.min()), int(idx.max())
        if lowest < 0 or highest >= self.config.vocab_size:
            bad = lowest if lowest < 0 else highest
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")

    def _ropes(self, positions: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """(cos, sin) of each layer, computed once per distinct rotary embedding."""
        if self.rotary is None:
            return [None] * len(self.blocks)
        global_rope = self.rotary(positions, dtype)
        local_rope = None if self.rotary_local is None else self.rotary_local(positions, dtype)
        windows = self.config.layer_windows
        return [
            local_rope if local_rope is not None and windows[i] is not None else global_rope
            for i in range(len(windows))
        ]

    def forward(
        self,
        idx: torch.Tensor,
        cache: DecoderCache | None = None,
        *,
        positions: torch.Tensor | None = None,
        input_lens: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits (b, t, vocab_size) of token ids ``idx`` (b, t).

        ``cache``: ``idx`` are the tokens after the cached ones (positions from each row's length on), and are
        added to it. ``positions`` (b, t) or (t,): absolute positions without a cache (default 0..t-1; context
        parallelism passes a shard's). ``input_lens`` (b,): right-padded rows' real lengths (first step only).
        """
        self._check_tokens(idx)
        b, t = idx.shape
        if input_lens is not None:
            input_lens = torch.as_tensor(input_lens, dtype=torch.int64, device=idx.device)
            if input_lens.shape != (b,) or (
                not torch.compiler.is_compiling() and bool(((input_lens < 1) | (input_lens > t)).any())
            ):
                raise ValueError(f"input_lens must hold {b} lengths in [1, {t}], got {input_lens.tolist()}")
        step = None
        if cache is not None:
            if positions is not None:
                raise ValueError("positions come from the cache when there is one; pass one or the other")
            if len(cache.layers) != len(self.blocks):
                raise ValueError(f"the cache has {len(cache.layers)} layers; this model has {len(self.blocks)}")
            step = cache.begin(b, t, input_lens)
            positions = step.positions  # (b, t)
        elif positions is None:
            if t > self.config.context_length:
                raise ValueError(f"sequence length {t} exceeds context_length {self.config.context_length}")
            positions = torch.arange(t, device=idx.device).expand(b, t)  # (b, t)
        elif positions.dim() == 1:
            positions = positions.expand(b, t)  # (b, t)
        x = self.tok_emb(idx)  # (b, t, d_model)
        if self.config.embed_scale:
            x = x * torch.tensor(self.config.d_model**0.5, dtype=x.dtype)  # Gemma: in the activations' dtype
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)  # (b, t, d_model)
        ropes = self._ropes(positions, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, ropes[i], None if cache is None else cache.layers[i], step)  # (b, t, d_model)
        if cache is not None:
            cache.finish(step)
        logits = self.lm_head(self.final_norm(x))  # (b, t, vocab_size)
        if self.config.final_softcap is not None:
            cap = self.config.final_softcap
            logits = torch.tanh(logits / cap) * cap  # Gemma 2: logits squashed into (-cap, cap)
        return logits

    def extra_repr(self) -> str:
        return f"model_type={self.config.model_type!r}, attn_impl={self.attn_impl!r}"
