"""Modern decoders on attnlab's attention: Llama 3, Qwen 2/3, Mistral, Gemma 2/3, gpt-oss, DeepSeek-V3, GPT-2.

One :class:`Decoder`, assembled from small parts by a validated frozen :class:`DecoderConfig`; any attention
backend (``attn_impl``); checkpoints from Hugging Face directories (:func:`from_hf`); KV caches per layer kind
(:mod:`.cache`); generation with one options object (:func:`generate`).
"""

from .cache import DecoderCache
from .config import DecoderConfig, MLAConfig, MoEConfig, RopeConfig
from .decoder import Decoder
from .generate import GenerationStats, generate, iter_generate
from .hf import from_hf, read_config

__all__ = [
    "Decoder",
    "DecoderCache",
    "DecoderConfig",
    "GenerationStats",
    "MLAConfig",
    "MoEConfig",
    "RopeConfig",
    "from_hf",
    "generate",
    "iter_generate",
    "read_config",
]
