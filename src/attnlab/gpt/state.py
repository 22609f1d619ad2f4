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
from .config import GPTConfig
from .files import TensorInfo
from .model import GPTModel
from .tensor_check import check_tensors

__all__ = ["export_state", "load_state", "state_keys", "state_shapes", "tensor_infos"]

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


def state_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor :func:`export_state` writes for a model of ``config``, with its shape, computed from the
    config alone (nothing is built, so a config can be checked against a file before any allocation)."""
    d, vocab = config.d_model, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (vocab, d), "pos_emb.weight": (config.context_length, d)}
    for i in range(config.n_layers):
        block = f"blocks.{i}."
        shapes |= {block + "norm1.weight": (d,), block + "norm1.bias": (d,)}
        shapes |= {block + "norm2.weight": (d,), block + "norm2.bias": (d,)}
        shapes |= {block + "ff.fc_in.weight": (4 * d, d), block + "ff.fc_in.bias": (4 * d,)}
        shapes |= {block + "ff.fc_out.weight": (d, 4 * d), block + "ff.fc_out.bias": (d,)}
    shapes |= {"final_norm.weight": (d,), "final_norm.bias": (d,)}
    if not config.tie_embeddings:
        shapes["out_head.weight"] = (vocab, d)
    attention = {"W_query": (d, d), "W_key": (d, d), "W_value": (d, d), "W_out": (d, d), "b_out": (d,)}
    if config.qkv_bias:
        attention |= {"b_query": (d,), "b_key": (d,), "b_value": (d,)}
    for i in range(config.n_layers):
        shapes |= {f"blocks.{i}.attn.{name}": attention[name] for name in _ATTENTION_FIELDS if name in attention}
    return shapes


def tensor_infos(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    """The shapes and dtypes of ``state``'s tensors, as :func:`~.tensor_check.check_tensors` takes them."""
    return {
        name: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch."), t.dtype.is_floating_point)
        for name, t in state.items()
    }


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

    Every expected key must be present with its shape and a floating-point dtype, and no other key may
    be: a checkpoint for another configuration fails with a ``ValueError`` naming the keys instead of
    loading partially, and integer or boolean tensors are refused rather than cast.
    """
    check_tensors(state_shapes(model.config), tensor_infos(state), "weights")
    for name, param in model.named_parameters():
        if not _is_attention(name):
            copy_into(param, state[name])
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}.attn."
        weights = AttentionWeights(**{k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        block.attn.set_weights(weights)
