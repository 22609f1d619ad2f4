"""Checking a checkpoint's tensors against the config beside it, from shapes alone, before building anything.

A config's sizes decide how much memory the model takes, so a config that claims a billion layers must be
refused before a single layer is built. The tensors' shapes (known without reading their data, see
:class:`.files.TensorInfo`) say what the sizes really are: :func:`check_layer_count` compares the number
of layers first (it bounds everything else), :func:`check_sizes` each size field against the tensor
dimension it must equal, and :func:`check_tensors` every expected name, shape and dtype;
:func:`check_finite` then checks the values, once they are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .files import TensorInfo, one_line

__all__ = ["SizeField", "check_finite", "check_layer_count", "check_sizes", "check_tensors", "layer_indices"]


@dataclass(frozen=True)
class SizeField:
    """``field`` (its ``value`` from the config) must equal dimension ``dim`` of tensor ``tensor``."""

    field: str
    value: int
    tensor: str
    dim: int


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(shape))  # (48,) for one dimension, () for none


def layer_indices(names: Sequence[str], prefix: str) -> set[int]:
    """The layer numbers ``i`` in tensor names ``{prefix}{i}.*`` (e.g. prefix ``"h."`` or ``"blocks."``)."""
    found = set()
    for name in names:
        head, _, rest = name.removeprefix(prefix).partition(".")
        if name.startswith(prefix) and rest and head.isdigit() and head.isascii():
            found.add(int(head))
    return found


def check_layer_count(
    field: str, value: int, names: Sequence[str], prefix: str, source: str, config_file: str = "the config"
) -> None:
    """``ValueError`` unless the config's ``field`` = ``value`` layers match the ``{prefix}{i}.`` tensors."""
    indices = layer_indices(names, prefix)
    if value != len(indices) or indices != set(range(len(indices))):
        held = f"{prefix}0 ... {prefix}{max(indices)}" if indices else "none"
        raise ValueError(
            f"{source}: {config_file} has {field}={value}, but the tensors hold {len(indices)} layers ({held})"
        )


def check_sizes(
    sizes: Sequence[SizeField], infos: Mapping[str, TensorInfo], source: str, config_file: str = "the config"
) -> None:
    """``ValueError`` naming the field, its value and the tensor's shape where the two disagree."""
    for size in sizes:
        info = infos.get(size.tensor)
        if info is None:
            raise ValueError(f"{source}: tensor {size.tensor!r} is missing (it gives {size.field})")
        if len(info.shape) <= size.dim or info.shape[size.dim] != size.value:
            raise ValueError(
                f"{source}: {config_file} has {size.field}={size.value}, but {size.tensor} has shape "
                f"{_shape(info.shape)} (dimension {size.dim} should be {size.field})"
            )


def check_tensors(
    expected: Mapping[str, tuple[int, ...]],
    infos: Mapping[str, TensorInfo],
    source: str,
    optional: Sequence[str] = (),
) -> None:
    """``ValueError`` unless ``infos`` holds exactly the ``expected`` names (plus any of ``optional``),
    each with its expected shape and a floating-point dtype (integers, booleans and complex numbers would
    be cast silently into the float parameters)."""
    missing = [name for name in expected if name not in infos and name not in optional]
    unexpected = sorted(name for name in infos if name not in expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: the tensors do not fit this config ({len(missing)} missing, {len(unexpected)} unexpected); "
            f"missing: {one_line(missing[:5], 200)}, unexpected: {one_line(unexpected[:5], 200)}"
        )
    for name, info in infos.items():
        if info.shape != tuple(expected[name]):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {_shape(info.shape)}, this config needs {_shape(expected[name])}"
            )
        if not info.is_floating:
            raise ValueError(f"{source}: tensor {name!r} has dtype {info.dtype}; weights must be floating-point")


def check_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``ValueError`` naming the first tensor that holds NaN or infinite values (a damaged checkpoint)."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source}: tensor {name!r} holds NaN or infinite values")
