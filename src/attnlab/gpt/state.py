"""A GPT model's weights in one layout that does not depend on the attention implementation.

Each implementation stores its attention parameters its own way (per-head linears, a fused q/k/v
matrix, ``nn.MultiheadAttention``'s packed projection), so ``state_dict()`` keys differ between them.
Here everything outside attention keeps its ``named_parameters()`` name (the tied head appears once,
as ``tok_emb.weight``) and each block's attention is written as the fields of
:class:`~attnlab.weights.AttentionWeights`: ``blocks.{i}.attn.W_query``, ..., ``blocks.{i}.attn.b_out``.
Both attnlab's checkpoints and the Hugging Face converter use this layout, so any implementation
loads any of them.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from ..implementations.base import copy_into
from ..weights import AttentionWeights
from .model import GPTModel

__all__ = ["export_state", "load_state", "state_keys"]

_ATTENTION_FIELDS = tuple(f.name for f in fields(AttentionWeights) if f.name != "sinks")  # GPT-2 has no sinks
_QKV_BIAS_FIELDS = ("b_query", "b_key", "b_value")


def _is_attention(name: str) -> bool:
    parts = name.split(".")  # e.g. blocks.3.attn.qkv.weight
    return len(parts) > 2 and parts[0] == "blocks" and parts[2] == "attn"


def _attention_keys(model: GPTModel) -> list[str]:
    names = [f for f in _ATTENTION_FIELDS if model.config.qkv_bias or f not in _QKV_BIAS_FIELDS]
    return [f"blocks.{i}.attn.{f}" for i in range(len(model.blocks)) for f in names]


def state_keys(model: GPTModel) -> list[str]:
    """The keys :func:`export_state` writes and :func:`load_state` expects for this model's config."""
    plain = [name for name, _ in model.named_parameters() if not _is_attention(name)]
    return plain + _attention_keys(model)


def export_state(model: GPTModel) -> dict[str, torch.Tensor]:
    """The model's weights in the implementation-independent layout (detached copies)."""
    state = {name: param.detach().clone() for name, param in model.named_parameters() if not _is_attention(name)}
    for i, block in enumerate(model.blocks):
        weights = block.attn.get_weights()
        for name in _ATTENTION_FIELDS:
            tensor = getattr(weights, name)
            if tensor is not None:
                state[f"blocks.{i}.attn.{name}"] = tensor
    return state


def load_state(model: GPTModel, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (the layout of :func:`export_state`) into ``model``, keeping its device and dtype.

    Every expected key must be present with its shape and no other key may be: a checkpoint for another
    configuration fails with a ``ValueError`` naming the keys instead of loading partially.
    """
    expected = state_keys(model)
    missing = [k for k in expected if k not in state]
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected); "
            f"missing: {missing[:5]}, unexpected: {unexpected[:5]}"
        )
    for name, param in model.named_parameters():
        if _is_attention(name):
            continue
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(f"{name} has shape {tuple(state[name].shape)}, this model needs {tuple(param.shape)}")
        copy_into(param, state[name])
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}.attn."
        weights = AttentionWeights(**{k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        block.attn.set_weights(weights)
