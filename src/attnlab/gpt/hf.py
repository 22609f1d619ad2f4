"""Loading Hugging Face GPT-2 checkpoints (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).

GPT-2's projections are ``Conv1D`` modules whose weights are stored ``(in_features, out_features)``,
the transpose of ``nn.Linear``; ``c_attn`` packs the query, key and value projections side by side
along its output dimension. :func:`hf_to_state` undoes both and renames everything into the layout of
:mod:`.state`, so the attention weights reach any implementation through ``set_weights``.
Nothing here downloads anything: the directory must already hold the files.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import GPTConfig
from .model import GPTModel
from .state import load_state

__all__ = ["config_from_hf", "hf_to_state", "load_hf_gpt2", "read_hf_weights"]

#: Activations that are GPT-2's GELU with the tanh approximation, under the names transformers uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
#: Non-learned buffers some GPT-2 checkpoints carry (the causal mask): recomputed by every implementation.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf_config: dict[str, Any]) -> GPTConfig:
    """The :class:`GPTConfig` of a GPT-2 ``config.json``; ``ValueError`` for variants this model cannot express."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json has model_type {hf_config.get('model_type')!r}; only 'gpt2' is supported")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _TANH_GELUS:
        raise ValueError(f"activation_function {activation!r} is not supported; expected one of {_TANH_GELUS}")
    n_embd = hf_config.get("n_embd", 768)
    n_inner = hf_config.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"n_inner {n_inner} is not supported; this model's feed-forward width is 4 * n_embd")
    for flag, supported in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf_config.get(flag, supported) != supported:
            raise ValueError(f"{flag}={hf_config[flag]} is not supported (only {supported})")
    return GPTConfig(
        vocab_size=hf_config.get("vocab_size", 50257),
        context_length=hf_config.get("n_positions", 1024),
        d_model=n_embd,
        n_layers=hf_config.get("n_layer", 12),
        n_heads=hf_config.get("n_head", 12),
        dropout=hf_config.get("resid_pdrop", 0.1),
        qkv_bias=True,  # Conv1D always has a bias
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
        layer_norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
    )


def read_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, else of ``pytorch_model.bin`` (loaded with ``weights_only=True``,
    which refuses pickled code). Keys lose their ``transformer.`` prefix when they have one."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        raw = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        raw = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
    return {key.removeprefix("transformer."): tensor for key, tensor in raw.items()}


def hf_to_state(hf_weights: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2's tensors (keys without ``transformer.``) renamed and transposed into the :mod:`.state` layout."""
    weights = {k: v for k, v in hf_weights.items() if not k.endswith(_IGNORED_SUFFIXES)}

    def take(key: str) -> torch.Tensor:
        if key not in weights:
            raise ValueError(f"GPT-2 checkpoint lacks tensor {key!r}")
        return weights.pop(key)

    state = {"tok_emb.weight": take("wte.weight"), "pos_emb.weight": take("wpe.weight")}
    for i in range(config.n_layers):
        hf, ours = f"h.{i}.", f"blocks.{i}."
        # Conv1D (in, out) -> Linear (out, in); c_attn's 3 * d_model output rows are [queries; keys; values].
        W_query, W_key, W_value = take(hf + "attn.c_attn.weight").t().chunk(3)  # 3 x (d_model, d_model)
        b_query, b_key, b_value = take(hf + "attn.c_attn.bias").chunk(3)  # 3 x (d_model,)
        state |= {
            ours + "norm1.weight": take(hf + "ln_1.weight"),
            ours + "norm1.bias": take(hf + "ln_1.bias"),
            ours + "attn.W_query": W_query,
            ours + "attn.W_key": W_key,
            ours + "attn.W_value": W_value,
            ours + "attn.b_query": b_query,
            ours + "attn.b_key": b_key,
            ours + "attn.b_value": b_value,
            ours + "attn.W_out": take(hf + "attn.c_proj.weight").t(),  # (d_model, d_model)
            ours + "attn.b_out": take(hf + "attn.c_proj.bias"),
            ours + "norm2.weight": take(hf + "ln_2.weight"),
            ours + "norm2.bias": take(hf + "ln_2.bias"),
            ours + "ff.fc_in.weight": take(hf + "mlp.c_fc.weight").t(),  # (4 d_model, d_model)
            ours + "ff.fc_in.bias": take(hf + "mlp.c_fc.bias"),
            ours + "ff.fc_out.weight": take(hf + "mlp.c_proj.weight").t(),  # (d_model, 4 d_model)
            ours + "ff.fc_out.bias": take(hf + "mlp.c_proj.bias"),
        }
    state["final_norm.weight"] = take("ln_f.weight")
    state["final_norm.bias"] = take("ln_f.bias")
    lm_head = weights.pop("lm_head.weight", None)  # (vocab, d_model), nn.Linear layout already
    if not config.tie_embeddings:
        if lm_head is None:
            raise ValueError("config has tie_word_embeddings=false but the checkpoint lacks lm_head.weight")
        state["out_head.weight"] = lm_head
    if weights:
        raise ValueError(f"GPT-2 checkpoint has tensors this model does not use: {sorted(weights)[:5]}")
    return state


def load_hf_gpt2(directory: str | Path, attn_impl: str = "sdpa", dropout: float | None = None) -> GPTModel:
    """A :class:`GPTModel` with the weights of the GPT-2 checkpoint in ``directory``, float32, CPU, eval mode.

    ``dropout`` replaces the checkpoint's (``resid_pdrop``): 0.0 for inference with an implementation that
    has no dropout, such as ``flex``; dropout is inactive in eval mode anyway.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    config = config_from_hf(json.loads(config_path.read_text()))
    if dropout is not None:
        config = replace(config, dropout=dropout)
    model = GPTModel(config, attn_impl=attn_impl)
    load_state(model, hf_to_state(read_hf_weights(directory), config))
    return model.eval()
