"""The model a run trains: one function, :func:`build_model`, from a preset name.

A preset fixes the architecture's size; the task fixes the vocabulary and the sequence length. The model
maps token ids (b, t) to next-token logits (b, t, vocab_size). Weights start as GPT-2's: normal with standard
deviation 0.02, biases zero, norms one (PyTorch's default embedding init, N(0, 1), would make the tied output
head's first logits huge). They are drawn in the implementation-independent layout of
:mod:`attnlab.gpt.state`, from a generator seeded by ``seed``: every attention implementation starts from the
very same weights, so two runs differ only by how each computes attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..gpt import GPTConfig, GPTModel
from ..gpt.state import export_state, load_state

__all__ = ["PRESETS", "ModelPreset", "build_model", "count_parameters"]


@dataclass(frozen=True)
class ModelPreset:
    """A decoder's size: ``n_layers`` blocks of ``n_heads`` heads on a ``d_model``-wide residual stream."""

    d_model: int
    n_layers: int
    n_heads: int


#: Model sizes for training from scratch on a CPU (``tiny``) or a GPU (``small``).
PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(d_model=128, n_layers=2, n_heads=4),
    "small": ModelPreset(d_model=256, n_layers=4, n_heads=8),
}

INIT_STD = 0.02  # GPT-2's initial weight scale


def build_model(preset_name: str, attn_impl: str, vocab_size: int, seq_len: int, *, seed: int = 0) -> nn.Module:
    """A freshly initialised decoder of preset ``preset_name`` on attention implementation ``attn_impl``, for
    ``vocab_size`` token ids and sequences up to ``seq_len`` tokens, without dropout; weights from ``seed``."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown model preset {preset_name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    config = GPTConfig(
        vocab_size=vocab_size,
        context_length=seq_len,
        d_model=preset.d_model,
        n_layers=preset.n_layers,
        n_heads=preset.n_heads,
        dropout=0.0,
    )
    model = GPTModel(config, attn_impl)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in export_state(model).items():  # a fixed order and layout, whatever the implementation
        if "norm" in name and name.endswith("weight"):
            state[name] = torch.ones_like(tensor)
        elif tensor.dim() < 2:  # biases
            state[name] = torch.zeros_like(tensor)
        else:
            state[name] = torch.randn(tensor.shape, generator=generator) * INIT_STD
    load_state(model, state)
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
