"""Weight-only quantization of a model's linear layers, through torchao; and the bytes its weights hold.

Decoding one token at batch 1 reads every weight once and does two FLOPs per weight: it is bound by memory
bandwidth, not arithmetic. Storing the ``nn.Linear`` weights as int8 (one byte each, plus one float scale
per output channel) instead of float32 cuts the bytes a step reads by about 4x; the matmul dequantizes on
the fly. Activations stay in the model's dtype ("weight-only").

- ``quantize_weights(model, "int8")``: int8 weights, symmetric, one scale per output channel (row), on any
  device (torchao's ``Int8WeightOnlyConfig``).
- ``quantize_weights(model, "int8_dynamic")``: the same int8 weights, and each token's activations quantized
  to int8 on the fly (one scale per token), so the matmul itself runs in int8 (``torch._int_mm``; torchao's
  ``Int8DynamicActivationInt8WeightConfig``). Not weight-only: it adds the activations' rounding error.
  Why offer it: on a CPU, torchao's weight-only int8 path converts the whole int8 matrix to float on every
  call (read 1 byte, write and read 4 bytes per weight), so eager decoding gets *slower*; this path reads
  the int8 matrix once.
- ``quantize_weights(model, "int4")``: int4 weights in groups of 128 along the input, torchao's tinygemm
  kernel (``Int4WeightOnlyConfig``, tile-packed layout): CUDA and bfloat16 only, in torchao 0.18. Anywhere
  else it is refused with a ``ValueError`` naming the mode and the device (or dtype).
- :func:`weight_bytes`: the bytes the parameters hold, quantized ones included. torchao's quantized weights
  are tensor subclasses whose ``nbytes`` reports the float tensor they stand for; what they really hold is
  their inner tensors (``__tensor_flatten__``: int8 data, scales, zero points), which is what is summed.

Only ``nn.Linear`` layers are quantized: embeddings are read one row per token, so their bytes barely
matter to a decode step. A linear head tied to the token embedding (GPT-2) gets its own quantized copy;
the embedding keeps its float table, so the tie is broken (``model.tok_emb.weight`` is no longer the head's).

torchao is an optional dependency (``pip install 'attnlab[quant]'``); without it these functions raise
``ModuleNotFoundError`` naming the package.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["INT4_GROUP_SIZE", "MODES", "quantize_weights", "tensor_bytes", "weight_bytes"]

#: The weight-only quantization modes :func:`quantize_weights` knows.
MODES = ("int8", "int8_dynamic", "int4")
#: Input features sharing one int4 scale (torchao's default group size).
INT4_GROUP_SIZE = 128
#: The tinygemm tile layout packs output rows in groups of 8 and input columns in tiles of 8 x 16.
_INT4_ROW_MULTIPLE = 8
_INT4_COLUMN_MULTIPLE = 128

LayerFilter = Callable[[str, nn.Linear], bool]


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence these loggers' warnings for the duration (torchao's import logs every optional CUDA
    extension it cannot load, which on a CPU machine is all of them)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao_quantization() -> ModuleType:
    """``torchao.quantization``, or ``ModuleNotFoundError`` naming the package to install."""
    try:
        with _quiet_loggers("torchao", "torch.utils._pytree"):
            return importlib.import_module("torchao.quantization")
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] != "torchao":
            raise
        raise ModuleNotFoundError(
            "weight quantization needs the package 'torchao' (pip install torchao, or pip install 'attnlab[quant]')",
            name="torchao",
        ) from None


def _linear_layers(model: nn.Module, layer_filter: LayerFilter | None) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (layer_filter is None or layer_filter(name, module))
    ]


def _check_int4(layers: list[tuple[str, nn.Linear]]) -> None:
    """Refuse int4 where torchao's tinygemm int4 kernel cannot run, naming the mode and what is wrong."""
    for name, layer in layers:
        weight = layer.weight
        if weight.device.type != "cuda":
            raise ValueError(
                f"mode 'int4' is not supported on device {weight.device.type!r} (layer {name!r}): torchao's "
                "int4 weight-only kernel (tinygemm) runs on CUDA only; use mode 'int8'"
            )
        if weight.dtype != torch.bfloat16:
            raise ValueError(
                f"mode 'int4' needs bfloat16 weights, layer {name!r} holds {weight.dtype}: convert the model "
                "with .to(torch.bfloat16) first"
            )
        out_features, in_features = weight.shape
        if out_features % _INT4_ROW_MULTIPLE or in_features % _INT4_COLUMN_MULTIPLE:
            raise ValueError(
                f"mode 'int4' needs out_features divisible by {_INT4_ROW_MULTIPLE} and in_features by "
                f"{_INT4_COLUMN_MULTIPLE}; layer {name!r} is ({out_features}, {in_features}): leave it out "
                "with layer_filter"
            )


def quantize_weights(model: nn.Module, mode: str, *, layer_filter: LayerFilter | None = None) -> nn.Module:
    """Quantize the weights of ``model``'s ``nn.Linear`` layers in place (``mode``: one of :data:`MODES`);
    returns ``model``.

    ``layer_filter(name, module) -> bool`` chooses which linear layers to quantize (default: all). Every
    check runs before any layer is changed: an unknown mode, int4 off CUDA or off bfloat16, or a layer
    whose shape the int4 layout cannot pack is a ``ValueError`` and the model is left untouched.
    Quantized weights are for inference (no gradients flow to them).
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose from {', '.join(MODES)}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _linear_layers(model, layer_filter)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize (after layer_filter)")
    if mode == "int4":
        _check_int4(layers)
    quantization = _torchao_quantization()
    if mode == "int8":
        # One symmetric scale per output row ("per channel"). set_inductor_config=False: torchao would
        # otherwise change torch._inductor's global settings as a side effect.
        config = quantization.Int8WeightOnlyConfig(granularity=quantization.PerRow(), set_inductor_config=False)
    elif mode == "int8_dynamic":  # per-row weights, per-token activations (symmetric), int8 matmul
        config = quantization.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        config = quantization.Int4WeightOnlyConfig(
            group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    chosen = {id(module) for _, module in layers}
    quantization.quantize_(model, config, filter_fn=lambda module, _fqn: id(module) in chosen)
    return model


def _plain_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The ordinary tensors that hold ``tensor``'s data: itself, or a subclass's inner tensors, recursively."""
    if not is_traceable_wrapper_subclass(tensor):
        yield tensor
        return
    attributes, _ = tensor.__tensor_flatten__()
    for attribute in attributes:
        inner = getattr(tensor, attribute)
        if inner is not None:
            yield from _plain_tensors(inner)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of data ``tensor`` holds: ``numel * element_size`` of each plain tensor behind it (a torchao
    quantized weight: its int8/int4 data, scales and zero points, not the float size it reports)."""
    return sum(inner.numel() * inner.element_size() for inner in _plain_tensors(tensor))


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters, each counted once (a tied weight is one tensor), quantized
    weights at their real size (see :func:`tensor_bytes`)."""
    return sum(tensor_bytes(parameter) for parameter in model.parameters())
