"""The GPT model of the book's chapter 4, on any registered attention implementation.

``GPTModel(config, attn_impl="sdpa")``: token and position embeddings, ``n_layers`` transformer blocks
(pre-LayerNorm, multi-head attention built by name from the registry, GELU feed-forward of width 4x,
residual connections, dropout), a final LayerNorm and the output head, tied to the token embedding when
``config.tie_embeddings``. The same weights give the same logits whichever implementation is chosen:
the attention weights travel as :class:`~attnlab.weights.AttentionWeights` (see :mod:`.state`).

Dropout and implementations without it (``flex``, ``flash_*``): the model builds, and runs in eval mode,
whatever ``config.dropout`` says (dropout does nothing in eval mode, so a checkpoint's dropout must not
stop inference). In training mode such a model refuses to run while ``config.dropout > 0``, with a
``ValueError``, rather than train without the attention dropout the config asks for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..registry import build, get_implementation
from .config import GPTConfig
from .kv_cache import KVCache, LayerKVCache

__all__ = ["FeedForward", "GPTModel", "TransformerBlock"]


class FeedForward(nn.Module):
    """d_model -> 4 d_model -> d_model with GPT-2's GELU (tanh approximation, "gelu_new")."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, 4 * d_model)
        self.gelu = nn.GELU(approximate="tanh")
        self.fc_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.gelu(self.fc_in(x)))  # (b, t, d_model)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(norm1(x)), then x + ff(norm2(x)), dropout on each branch."""

    def __init__(self, config: GPTConfig, attn_impl: str) -> None:
        super().__init__()
        # An implementation without dropout gets 0 (see the module docstring); GPTModel refuses training.
        attn_dropout = config.dropout if get_implementation(attn_impl).capabilities.dropout else 0.0
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = build(
            attn_impl,
            d_in=config.d_model,
            d_out=config.d_model,
            num_heads=config.n_heads,
            context_length=config.context_length,
            dropout=attn_dropout,
            qkv_bias=config.qkv_bias,
        )
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ff = FeedForward(config.d_model)
        self.drop_shortcut = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        normed = self.norm1(x)  # (b, t, d_model)
        attended = self.attn(normed) if cache is None else self.attn.forward_cached(normed, cache)
        x = x + self.drop_shortcut(attended)  # (b, t, d_model)
        return x + self.drop_shortcut(self.ff(self.norm2(x)))  # (b, t, d_model)


class GPTModel(nn.Module):
    """Token ids (b, t) -> next-token logits (b, t, vocab_size); ``attn_impl`` names the attention."""

    def __init__(self, config: GPTConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.attn_impl = attn_impl
        # (an unknown name fails here, with the list of valid ones)
        self._attn_has_dropout = get_implementation(attn_impl).capabilities.dropout
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        self.drop_emb = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(config, attn_impl) for _ in range(config.n_layers)])
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.out_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight  # one (vocab, d_model) matrix, used twice

    def new_kv_cache(self, max_tokens: int | None = None) -> KVCache:
        """An empty cache for this model, for up to ``max_tokens`` positions (default: context_length)."""
        return KVCache(self.config.n_layers, self.config.context_length if max_tokens is None else max_tokens)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for token ids ``idx`` (b, t). With ``cache``, ``idx`` are the tokens after the
        ``cache.length`` cached ones: they get positions from there on, and are appended to it."""
        if self.training and self.config.dropout > 0 and not self._attn_has_dropout:
            raise ValueError(
                f"attention implementation {self.attn_impl!r} has no dropout, but the model is in training mode "
                f"with dropout {self.config.dropout}: call .eval() for inference, or train with dropout 0.0 or "
                "an implementation that has dropout"
            )
        if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"idx must be 2-D integer token ids (batch, tokens), got {idx.dtype} {tuple(idx.shape)}")
        t = idx.shape[1]
        if t < 1:
            raise ValueError("sequence length 0: the input needs at least one token")
        start = 0 if cache is None else cache.length
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"KV cache has {len(cache.layers)} layers; this model has {len(self.blocks)}")
        if start + t > self.config.context_length:
            raise ValueError(f"sequence length {start + t} exceeds context_length {self.config.context_length}")
        lowest, highest = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)
        if lowest < 0 or highest >= self.config.vocab_size:
            bad = lowest if lowest < 0 else highest
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        positions = torch.arange(start, start + t, device=idx.device)  # (t,)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(positions))  # (b, t, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])  # (b, t, d_model)
        return self.out_head(self.final_norm(x))  # (b, t, vocab_size)

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (b, t) by up to ``max_new_tokens`` tokens: (b, t + new). See :func:`.generate.generate`."""
        from .generate import generate  # imported here, as from_hf's import

        return generate(
            self,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=eos_id,
            use_cache=use_cache,
            generator=generator,
        )

    @classmethod
    def from_hf(
        cls,
        path: str | Path,
        attn_impl: str = "sdpa",
        dropout: float | None = None,
        max_bytes: int | None = None,
    ) -> GPTModel:
        """Load a Hugging Face GPT-2 checkpoint directory (see :func:`.hf.load_hf_gpt2`), in eval mode."""
        from .hf import load_hf_gpt2  # imported here: hf.py builds GPTModel, so it imports this module

        return load_hf_gpt2(path, attn_impl=attn_impl, dropout=dropout, max_bytes=max_bytes)

    @classmethod
    def load(
        cls,
        path: str | Path,
        attn_impl: str = "sdpa",
        dropout: float | None = None,
        max_bytes: int | None = None,
    ) -> GPTModel:
        """Load a checkpoint written by :meth:`save` (see :func:`.checkpoint.load_checkpoint`), in eval mode."""
        from .checkpoint import load_checkpoint  # imported here, as from_hf's import

        return load_checkpoint(path, attn_impl=attn_impl, dropout=dropout, max_bytes=max_bytes)

    def save(self, path: str | Path) -> None:
        """Write this model's config and weights (safetensors, implementation-independent) as the directory
        ``path``, as a whole (see :func:`.checkpoint.save_checkpoint`)."""
        from .checkpoint import save_checkpoint  # imported here, as from_hf's import

        save_checkpoint(self, path)

    def extra_repr(self) -> str:
        return f"attn_impl={self.attn_impl!r}"
