"""Loading Hugging Face GPT-2 checkpoints (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).

GPT-2's projections are ``Conv1D`` modules whose weights are stored ``(in_features, out_features)``,
the transpose of ``nn.Linear``; ``c_attn`` packs the query, key and value projections side by side
along its output dimension. :func:`hf_to_state` undoes both and renames everything into the layout of
:mod:`.state`, so the attention weights reach any implementation through ``set_weights``.
Nothing here downloads anything: the directory must already hold the files.

The directory is untrusted input. :func:`load_hf_gpt2` reads ``config.json`` with type checks, then the
tensor file's header (names, shapes, dtypes; see :mod:`.files`), checks the config's sizes against the
shapes and estimates the model's memory, all before building the model: a config that claims a billion
layers, or tensors that fit no config, fail with a ``ValueError`` naming the field and the tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..registry import get_implementation
from .config import GPTConfig
from .files import TensorFile, TensorInfo, check_directory, is_file, open_tensor_file, read_json_object
from .model import GPTModel
from .params import check_fits_in_memory
from .state import load_state
from .tensor_check import SizeField, check_finite, check_layer_count, check_sizes, check_tensors

__all__ = [
    "check_hf_tensors",
    "config_from_hf",
    "hf_shapes",
    "hf_to_state",
    "load_hf_gpt2",
    "open_hf_weights",
    "read_hf_config",
    "read_hf_weights",
]

CONFIG_FILE = "config.json"
#: The weight files tried, in this order.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Activations that are GPT-2's GELU with the tanh approximation, under the names transformers uses.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
#: Non-learned buffers some GPT-2 checkpoints carry (the causal mask): recomputed by every implementation.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(hf_config: dict[str, Any], key: str, default: Any, kind: str) -> Any:
    """``hf_config[key]`` (or ``default``), refused unless it is of ``kind``: "positive integer",
    "number", "boolean" or "string" (JSON's ``true`` is not an integer here, nor ``"12"``)."""
    value = hf_config.get(key, default)
    if kind == "positive integer":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{key} must be a {kind}, got {_show(value)} ({type(value).__name__})")
    return value


def config_from_hf(hf_config: dict[str, Any]) -> GPTConfig:
    """The :class:`GPTConfig` of a GPT-2 ``config.json``; ``ValueError`` for values of the wrong type and
    for variants this model cannot express."""
    if not isinstance(hf_config, dict):
        raise ValueError(f"{CONFIG_FILE} must hold a JSON object, got {type(hf_config).__name__}")
    model_type = _typed(hf_config, "model_type", "gpt2", "string")
    if model_type != "gpt2":
        raise ValueError(f"model_type {_show(model_type)} is not supported; only 'gpt2' is")
    activation = _typed(hf_config, "activation_function", "gelu_new", "string")
    if activation not in _TANH_GELUS:
        raise ValueError(f"activation_function {_show(activation)} is not supported; expected one of {_TANH_GELUS}")
    n_embd = _typed(hf_config, "n_embd", 768, "positive integer")
    if hf_config.get("n_inner") is not None:
        n_inner = _typed(hf_config, "n_inner", None, "positive integer")
        if n_inner != 4 * n_embd:
            raise ValueError(f"n_inner {n_inner} is not supported; this model's feed-forward width is 4 * n_embd")
    for flag, supported in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if _typed(hf_config, flag, supported, "boolean") != supported:
            raise ValueError(f"{flag}={hf_config[flag]} is not supported (only {supported})")
    return GPTConfig(
        vocab_size=_typed(hf_config, "vocab_size", 50257, "positive integer"),
        context_length=_typed(hf_config, "n_positions", 1024, "positive integer"),
        d_model=n_embd,
        n_layers=_typed(hf_config, "n_layer", 12, "positive integer"),
        n_heads=_typed(hf_config, "n_head", 12, "positive integer"),
        dropout=_typed(hf_config, "resid_pdrop", 0.1, "number"),
        qkv_bias=True,  # Conv1D always has a bias
        tie_embeddings=_typed(hf_config, "tie_word_embeddings", True, "boolean"),
        layer_norm_eps=_typed(hf_config, "layer_norm_epsilon", 1e-5, "number"),
    )


def read_hf_config(directory: str | Path) -> GPTConfig:
    """The :class:`GPTConfig` of ``directory/config.json`` (see :func:`config_from_hf`)."""
    path = Path(directory) / CONFIG_FILE
    if not is_file(path):
        raise ValueError(f"{directory} has no {CONFIG_FILE}: not a Hugging Face checkpoint directory")
    try:
        return config_from_hf(read_json_object(path))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _is_ignored(name: str) -> bool:
    return name.endswith(_IGNORED_SUFFIXES)


@contextmanager
def open_hf_weights(directory: str | Path) -> Iterator[TensorFile]:
    """The directory's ``model.safetensors``, else ``pytorch_model.bin``, as a :class:`~.files.TensorFile`
    (shapes and dtypes before data); keys lose their ``transformer.`` prefix when they have one."""
    directory = Path(directory)
    paths = [directory / name for name in WEIGHT_FILES if is_file(directory / name)]
    if not paths:
        names = " nor ".join(WEIGHT_FILES)
        raise ValueError(f"{directory} has neither {names} (sharded checkpoints are not read)")
    with open_tensor_file(paths[0]) as weights:
        yield weights.renamed(lambda key: key.removeprefix("transformer."))


def read_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``, else of ``pytorch_model.bin`` (loaded with ``weights_only=True``,
    which refuses pickled code). Keys lose their ``transformer.`` prefix when they have one."""
    with open_hf_weights(directory) as weights:
        return weights.load_all()


def hf_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every learned tensor of a GPT-2 checkpoint for ``config`` (keys without ``transformer.``), with its
    shape; ``Conv1D`` weights are ``(in, out)``. ``lm_head.weight`` is listed; it is optional when tied."""
    d, vocab = config.d_model, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (config.context_length, d)}
    for i in range(config.n_layers):
        h = f"h.{i}."
        shapes |= {h + "ln_1.weight": (d,), h + "ln_1.bias": (d,), h + "ln_2.weight": (d,), h + "ln_2.bias": (d,)}
        shapes |= {h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,)}
        shapes |= {h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,)}
        shapes |= {h + "mlp.c_fc.weight": (d, 4 * d), h + "mlp.c_fc.bias": (4 * d,)}
        shapes |= {h + "mlp.c_proj.weight": (4 * d, d), h + "mlp.c_proj.bias": (d,)}
    return shapes | {"ln_f.weight": (d,), "ln_f.bias": (d,), "lm_head.weight": (vocab, d)}


def check_hf_tensors(config: GPTConfig, infos: dict[str, TensorInfo], source: str) -> None:
    """``ValueError`` unless the checkpoint's tensors (``infos``, keys without ``transformer.``) are exactly
    those of a GPT-2 with ``config``: the layer count first (it bounds the rest), then each size field
    against the tensor it shapes, then every name, shape and dtype. The mask buffers are ignored."""
    learned = {name: info for name, info in infos.items() if not _is_ignored(name)}
    check_layer_count("n_layer", config.n_layers, list(learned), "h.", source, CONFIG_FILE)
    expected = hf_shapes(config)
    optional = ["lm_head.weight"] if config.tie_embeddings else []
    sizes = [
        SizeField("vocab_size", config.vocab_size, "wte.weight", 0),
        SizeField("n_embd", config.d_model, "wte.weight", 1),
        SizeField("n_positions", config.context_length, "wpe.weight", 0),
    ]
    check_sizes(sizes, learned, source, CONFIG_FILE)
    check_tensors(expected, learned, source, optional=optional)


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


def load_hf_gpt2(
    directory: str | Path,
    attn_impl: str = "sdpa",
    dropout: float | None = None,
    max_bytes: int | None = None,
) -> GPTModel:
    """A :class:`GPTModel` with the weights of the GPT-2 checkpoint in ``directory``, float32, CPU, eval mode.

    Everything is checked before the model is built: the config's types, its sizes against the tensors'
    shapes (read from the file's header), the tensors' dtypes (floating-point only), and the model's
    memory against ``max_bytes`` (default: this machine's physical memory); each failure is a
    ``ValueError`` naming what is wrong. ``dropout`` replaces the checkpoint's (``resid_pdrop``); it only
    matters in training mode (see :class:`GPTModel`).
    """
    directory = Path(directory)
    check_directory(directory)
    get_implementation(attn_impl)  # an unknown name fails before any file is read
    config = read_hf_config(directory)
    if dropout is not None:
        config = replace(config, dropout=dropout)
    with open_hf_weights(directory) as weights:
        check_hf_tensors(config, weights.infos, str(weights.path))
        check_fits_in_memory(config, attn_impl, max_bytes)
        learned = {name: weights.load(name) for name in weights.infos if not _is_ignored(name)}
        check_finite(learned, str(weights.path))
        model = GPTModel(config, attn_impl=attn_impl)
        load_state(model, hf_to_state(learned, config))
    return model.eval()
