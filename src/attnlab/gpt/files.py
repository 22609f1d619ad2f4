"""Reading checkpoint files that may be damaged or hostile: every failure is a one-line ``ValueError``.

A checkpoint directory comes from outside: its JSON may be a list, deeply nested or gigabytes long, its
tensor file truncated, random bytes, or a pickle of something other than tensors. The readers here turn
each of those into a ``ValueError`` naming the file and what is wrong with it (one line, so the CLI can
print it as one), and they read tensor files lazily: :class:`TensorFile` knows every tensor's name,
shape and dtype before any tensor data is read, so a config can be checked against the shapes first.

- ``.safetensors``: the header is parsed by ``safetensors.safe_open``; a tensor is read on ``load``.
- ``pytorch_model.bin``: ``torch.load(weights_only=True, mmap=True)``: no pickled code runs, and the
  tensors stay in the memory-mapped file until they are copied into the model.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..availability import missing_packages_reason

__all__ = [
    "MAX_JSON_BYTES",
    "TensorFile",
    "TensorInfo",
    "check_directory",
    "file_size",
    "is_file",
    "one_line",
    "open_tensor_file",
    "read_json_object",
    "require_package",
]

#: Larger JSON files are refused unread: a GPT-2 config.json is about 1 KB, a tokenizer.json a few MB.
MAX_JSON_BYTES = 64 * 2**20

#: safetensors dtype names of the floating-point types PyTorch can copy into a float parameter.
_SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_SAFETENSORS_FLOATS |= {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def require_package(name: str, purpose: str) -> None:
    """``ValueError`` unless the optional package ``name`` can be imported (``purpose`` says what for)."""
    reason = missing_packages_reason((name,))
    if reason is not None:
        raise ValueError(f"{purpose} {reason} (pip install 'attnlab[hf]')")


def is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False (not an ``OSError``) for unreadable or overlong paths."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # ValueError: a NUL character in the name
        return False


def check_directory(path: Path, what: str = "weights directory") -> None:
    """``ValueError`` unless ``path`` is an existing directory."""
    if "\x00" in str(path):  # no file name may hold a NUL character
        raise ValueError(f"{what} {one_line(repr(str(path)))} is not a valid path")
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as error:  # e.g. a name longer than the file system allows
        raise ValueError(f"{what} {one_line(path)} cannot be used: {one_line(error.strerror)}") from None
    if not exists:
        raise ValueError(f"{what} {one_line(path)} does not exist")
    if not is_dir:
        raise ValueError(f"{what} {one_line(path)} is not a directory")


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes; ``ValueError`` (not ``OSError``) if it cannot be read."""
    try:
        return path.stat().st_size
    except OSError as error:
        raise ValueError(f"cannot read {path}: {one_line(error.strerror)}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object (a dict) in ``path``; ``ValueError`` for anything else, naming the file."""
    if (size := file_size(path)) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size:,} bytes, more than the {MAX_JSON_BYTES:,} a config may have")
    try:
        text = path.read_bytes().decode("utf-8")
        value = json.loads(text)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {one_line(error.strerror)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text, so not JSON") from None
    except ValueError as error:  # JSONDecodeError, or an integer too long to convert
        raise ValueError(f"{path} is not valid JSON: {one_line(error)}") from None
    except RecursionError:
        raise ValueError(f"{path} nests too deeply to be a config") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object ({{...}})")
    return value


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor's shape and dtype, known before its data is read."""

    shape: tuple[int, ...]
    dtype: str  # e.g. "float32", "int64", "bool", as the file names it in PyTorch's words where it can
    is_floating: bool


class TensorFile:
    """The tensors of one checkpoint file: names, shapes and dtypes up front (``infos``), data on ``load``."""

    def __init__(
        self,
        path: Path,
        infos: dict[str, TensorInfo],
        metadata: dict[str, str],
        loader: Callable[[str], torch.Tensor],
    ) -> None:
        self.path = path
        self.infos = infos
        self.metadata = metadata
        self._loader = loader  # name -> torch.Tensor

    def load(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (read from the file now); ``ValueError`` if the file cannot give it."""
        try:
            return self._loader(name)
        except Exception as error:  # a damaged file fails in the reader's own exception types
            raise ValueError(f"cannot read tensor {name!r} from {self.path}: {one_line(error)}") from error

    def load_all(self) -> dict[str, torch.Tensor]:
        return {name: self.load(name) for name in self.infos}

    def renamed(self, rename: Callable[[str], str]) -> TensorFile:
        """The same file with each tensor name passed through ``rename``; two names that become one are
        an error (which tensor was meant would be a guess)."""
        originals: dict[str, str] = {}
        for name in self.infos:
            new = rename(name)
            if new in originals:
                raise ValueError(f"{self.path} holds both {originals[new]!r} and {name!r}, two names for one tensor")
            originals[new] = name
        infos = {new: self.infos[old] for new, old in originals.items()}
        return TensorFile(self.path, infos, self.metadata, lambda name: self._loader(originals[name]))


@contextmanager
def open_tensor_file(path: Path) -> Iterator[TensorFile]:
    """A :class:`TensorFile` for a ``.safetensors`` file, else a ``torch.save`` zip file (``.bin``)."""
    if path.suffix == ".safetensors":
        with _open_safetensors(path) as tensors:
            yield tensors
    else:
        yield _open_torch_file(path)


@contextmanager
def _open_safetensors(path: Path) -> Iterator[TensorFile]:
    require_package("safetensors", f"reading {path.name}")
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as error:  # SafetensorError (a bare Exception subclass), OSError
        raise ValueError(f"{path} is not a readable safetensors file: {one_line(error)}") from error
    with handle:
        infos = {}
        try:
            for name in handle.keys():
                view = handle.get_slice(name)
                dtype = view.get_dtype()
                floating = dtype in _SAFETENSORS_FLOATS
                infos[name] = TensorInfo(tuple(view.get_shape()), _SAFETENSORS_FLOATS.get(dtype, dtype), floating)
            metadata = dict(handle.metadata() or {})
        except Exception as error:
            raise ValueError(f"{path} has a damaged safetensors header: {one_line(error)}") from error
        yield TensorFile(path, infos, metadata, handle.get_tensor)


def _open_torch_file(path: Path) -> TensorFile:
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {one_line(error.strerror)}") from None
    if not is_zip:
        raise ValueError(
            f"{path} is not a torch.save zip archive (an empty or damaged file, or the legacy pre-1.6 format, "
            "which cannot be memory-mapped: re-save it with torch.save, or use model.safetensors)"
        )
    try:
        # weights_only: the unpickler builds tensors and containers only, never runs pickled code;
        # mmap: tensor data stays in the file (no allocation) until it is copied into the model.
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ... from a damaged archive
        raise ValueError(f"{path} is not a readable torch checkpoint: {one_line(error)}") from error
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, expected a dict of tensor names to tensors")
    infos = {}
    for name, tensor in raw.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{path} maps {one_line(repr(name), 80)} to a {type(tensor).__name__}; "
                "expected tensor names (str) mapped to tensors"
            )
        # A strided view can claim more elements than its storage holds (e.g. stride 0): refuse it, so a
        # small file cannot stand for a huge model.
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise ValueError(f"{path}: tensor {name!r} of shape {tuple(tensor.shape)} has more elements than storage")
        dtype = str(tensor.dtype).removeprefix("torch.")
        infos[name] = TensorInfo(tuple(tensor.shape), dtype, tensor.dtype.is_floating_point)
    return TensorFile(path, infos, {}, lambda name: raw[name])
