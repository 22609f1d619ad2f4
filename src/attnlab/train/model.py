"""The model a run trains: one function, :func:`build_model`, from a preset name.

Every preset is a small Llama-style :class:`attnlab.models.Decoder` (RMSNorm, SwiGLU, rotary positions, tied
embeddings): 2 layers, ``d_model`` 128, 4 query heads of 32 features. They differ only in the attention
design, at (almost) the same parameter count (the feed-forward width makes up for the key/value weights a
design saves):

========  ===========================================  ======
preset    attention                                     d_ff
========  ===========================================  ======
mha       multi-head: 4 key/value heads                 384
gqa       grouped-query: 2 key/value heads              427
mqa       multi-query: 1 key/value head                 448
window    multi-head, causal sliding window of 16       384
mla       multi-head latent attention: a 64-wide        378
          latent + 16 rotary features cached per token
========  ===========================================  ======

The task fixes the vocabulary and the sequence length. The model maps token ids (b, t) to next-token logits
(b, t, vocab_size) and takes ``positions`` (context parallelism passes a shard's). Weights start as
GPT-2's: normal with standard deviation 0.02, biases zero, norms one, drawn in ``named_parameters`` order
from a generator seeded by ``seed`` (PyTorch's default embedding init, N(0, 1), would make the tied output
head's first logits huge). The parameter layout does not depend on the attention backend, so every
backend starts from the very same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import Decoder, DecoderConfig, MLAConfig

__all__ = ["PRESETS", "ModelPreset", "build_model", "count_parameters", "decoder_config"]

D_MODEL = 128
N_LAYERS = 2
NUM_HEADS = 4
INIT_STD = 0.02  # GPT-2's initial weight scale


@dataclass(frozen=True)
class ModelPreset:
    """An attention design: ``num_kv_heads`` key/value heads, an optional sliding ``window``, and the
    feed-forward width ``d_ff`` that brings the parameter count level with the others."""

    num_kv_heads: int
    d_ff: int
    window: int | None = None
    mla: MLAConfig | None = None


#: Attention designs at matched parameter count (see the module docstring).
PRESETS: dict[str, ModelPreset] = {
    "mha": ModelPreset(num_kv_heads=4, d_ff=384),
    "gqa": ModelPreset(num_kv_heads=2, d_ff=427),
    "mqa": ModelPreset(num_kv_heads=1, d_ff=448),
    "window": ModelPreset(num_kv_heads=4, d_ff=384, window=16),
    "mla": ModelPreset(
        num_kv_heads=4,
        d_ff=378,
        mla=MLAConfig(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32),
    ),
}


def decoder_config(preset_name: str, vocab_size: int, seq_len: int) -> DecoderConfig:
    """The :class:`~attnlab.models.DecoderConfig` of preset ``preset_name`` for this vocabulary and length."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown model preset {preset_name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    return DecoderConfig(
        vocab_size=vocab_size,
        d_model=D_MODEL,
        n_layers=N_LAYERS,
        num_heads=NUM_HEADS,
        num_kv_heads=preset.num_kv_heads,
        d_ff=preset.d_ff,
        context_length=seq_len,
        layer_windows=(preset.window,) * N_LAYERS,
        mla=preset.mla,
        tie_embeddings=True,
        model_type=f"attnlab-train-{preset_name}",
    )


def build_model(preset_name: str, attn_impl: str, vocab_size: int, seq_len: int, *, seed: int = 0) -> Decoder:
    """A freshly initialised decoder of preset ``preset_name`` on attention backend ``attn_impl``, for
    ``vocab_size`` token ids and sequences up to ``seq_len`` tokens; weights from ``seed``. A backend that
    cannot honour the design (e.g. ``sdpa`` has no sliding window) is refused here, by name."""
    model = Decoder(decoder_config(preset_name, vocab_size, seq_len), attn_impl)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # a shared (tied) weight comes once
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * INIT_STD)
            elif "norm" in name:
                parameter.fill_(1.0)
            else:  # biases
                parameter.zero_()
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
