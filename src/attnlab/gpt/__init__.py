"""A GPT-2 model on any registered attention implementation, with a KV cache and real checkpoints.

- :class:`GPTConfig`, :data:`PRESETS`: the architecture (GPT-2 small by default; gpt2-medium/large/xl);
- :class:`GPTModel`: ``GPTModel(config, attn_impl="sdpa")``, ``.generate(...)``, ``.from_hf(dir)``,
  ``.save(dir)`` / ``.load(dir)``;
- :class:`KVCache`, :func:`kv_cache_implementations`: decoding against stored keys and values;
- :func:`count_parameters`: parameter counts on the meta device;
- :func:`load_model`: an attnlab or Hugging Face GPT-2 checkpoint directory (checked before anything is built);
- :class:`GenerationOptions`: generation arguments, validated before any model is loaded.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import PRESETS, GPTConfig
from .generate import generate, iter_generate, sample_next_token
from .hf import load_hf_gpt2
from .kv_cache import KVCache, kv_cache_implementations
from .model import GPTModel
from .options import GenerationOptions
from .params import count_parameters

__all__ = [
    "PRESETS",
    "GPTConfig",
    "GPTModel",
    "GenerationOptions",
    "KVCache",
    "count_parameters",
    "generate",
    "iter_generate",
    "kv_cache_implementations",
    "load_checkpoint",
    "load_hf_gpt2",
    "load_model",
    "sample_next_token",
    "save_checkpoint",
]
