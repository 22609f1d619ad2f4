"""attnlab's own GPT checkpoints: ``attnlab_gpt.json`` (the config) + ``attnlab_gpt.safetensors`` (weights).

Weights are written in the implementation-independent layout of :mod:`.state`, so a model saved with
one attention implementation loads into any other. Safetensors holds plain tensors only (no pickled
code) and refuses shared storage, which is why the tied head is stored once, as ``tok_emb.weight``.
:func:`load_model` also accepts a Hugging Face GPT-2 directory, which is what the CLI takes.

The two files are one checkpoint:

- **saved as a whole**: both are written into a fresh directory beside the target, which then replaces
  the target by renames. A save that fails part-way leaves the old checkpoint as it was (or, if the
  process dies between the two renames, no checkpoint), never new weights beside an old config.
- **checked as a pair**: the weights file's metadata holds the config and a save id that the JSON file
  holds too; :func:`load_checkpoint` refuses a pair that disagrees, naming the differing fields.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..registry import get_implementation
from .config import GPTConfig
from .files import check_directory, is_file, one_line, open_tensor_file, read_json_object, require_package
from .hf import load_hf_gpt2
from .model import GPTModel
from .params import check_fits_in_memory
from .state import export_state, load_state, state_shapes
from .tensor_check import SizeField, check_finite, check_layer_count, check_sizes, check_tensors

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_checkpoint", "load_model", "save_checkpoint"]

CONFIG_FILE = "attnlab_gpt.json"
WEIGHTS_FILE = "attnlab_gpt.safetensors"
_FORMAT = "attnlab-gpt/2"  # the weights' metadata holds the config and a save id, as the JSON file does
_FORMAT_V1 = "attnlab-gpt/1"  # older: no pair check possible; still loaded, with the shape checks


def _config_json(config: GPTConfig) -> str:
    """The config as canonical JSON (sorted keys, no spaces): what the weights' metadata stores."""
    return json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _check_save_target(directory: Path) -> None:
    """Refuse to replace anything but a directory that is empty or holds an attnlab checkpoint only."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"cannot save a checkpoint to {directory}: it exists and is not a directory")
    others = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_FILE, WEIGHTS_FILE))
    if others:
        raise ValueError(
            f"cannot save a checkpoint to {directory}: it holds other files ({', '.join(others[:5])}), which a "
            "save (it replaces the whole directory) would delete; choose a new or empty directory"
        )


def _replace_directory(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target``: one rename if ``target`` is absent or empty, else two (the old one is
    moved aside first, and moved back if the second rename fails)."""
    if not target.exists() or not any(target.iterdir()):
        os.replace(staged, target)  # POSIX rename replaces an empty directory atomically
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, aside)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def save_checkpoint(model: GPTModel, directory: str | Path) -> None:
    """Write ``model``'s config and weights as the checkpoint directory ``directory``, as a whole.

    ``directory`` may be new, empty, or an earlier attnlab checkpoint (which is replaced); a directory
    holding other files is refused, since the save replaces the whole directory.
    """
    require_package("safetensors", "saving a checkpoint")
    from safetensors.torch import save_file

    target = Path(directory).resolve()  # a symlinked directory: replace its target, keep the link
    _check_save_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    staged = target.with_name(f".{target.name}.saving-{save_id[:12]}")
    staged.mkdir()
    try:
        state = {name: tensor.contiguous().cpu() for name, tensor in export_state(model).items()}
        metadata = {"format": _FORMAT, "save_id": save_id, "config": _config_json(model.config)}
        save_file(state, staged / WEIGHTS_FILE, metadata=metadata)
        payload = {"format": _FORMAT, "save_id": save_id, "config": model.config.to_dict()}
        (staged / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            _fsync(staged / name)
        _replace_directory(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # still there only if the save failed


def _read_config(path: Path) -> tuple[dict[str, Any], GPTConfig]:
    """The JSON payload of ``attnlab_gpt.json`` and the config in it, every field present and valid."""
    payload = read_json_object(path)
    if payload.get("format") not in (_FORMAT, _FORMAT_V1):
        raise ValueError(f"{path} has format {one_line(repr(payload.get('format')), 80)}, expected {_FORMAT!r}")
    values = payload.get("config")
    if not isinstance(values, dict):
        raise ValueError(f"{path} has no 'config' object (found {type(values).__name__}): not an attnlab checkpoint")
    missing = [f.name for f in fields(GPTConfig) if f.name not in values]
    if missing:
        raise ValueError(f"{path}: the config lacks field(s) {', '.join(missing)}")
    try:
        return payload, GPTConfig.from_dict(values)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _check_pair(payload: dict[str, Any], metadata: dict[str, str], weights_path: Path) -> None:
    """``ValueError`` unless the JSON payload and the weights' metadata come from the same save."""
    if metadata.get("format") != payload["format"]:
        raise ValueError(
            f"{weights_path} has format {one_line(repr(metadata.get('format')), 80)}, its {CONFIG_FILE} "
            f"{payload['format']!r}: the two files do not belong together"
        )
    if payload["format"] == _FORMAT_V1:
        return
    try:
        saved = json.loads(metadata.get("config", ""))
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"{weights_path} lacks a readable config in its metadata: not a complete attnlab checkpoint")
    differing = sorted(k for k in saved.keys() | payload["config"].keys() if saved.get(k) != payload["config"].get(k))
    if differing:
        shown = ", ".join(
            f"{k} {one_line(repr(payload['config'].get(k)), 40)} vs {one_line(repr(saved.get(k)), 40)}"
            for k in differing[:5]
        )
        raise ValueError(
            f"{CONFIG_FILE} and {WEIGHTS_FILE} in {weights_path.parent} were saved with different configs "
            f"({shown}; JSON vs weights): they do not belong together"
        )
    if metadata.get("save_id") != payload.get("save_id"):
        raise ValueError(
            f"{CONFIG_FILE} and {WEIGHTS_FILE} in {weights_path.parent} come from different saves (save ids "
            f"{one_line(repr(payload.get('save_id')), 40)} and {one_line(repr(metadata.get('save_id')), 40)})"
        )


def load_checkpoint(
    directory: str | Path,
    attn_impl: str = "sdpa",
    dropout: float | None = None,
    max_bytes: int | None = None,
) -> GPTModel:
    """The model saved by :func:`save_checkpoint` in ``directory``, on ``attn_impl``, CPU, eval mode.

    Before the model is built: the two files must come from one save, the tensors' names, shapes and
    dtypes must be those of the config, and the model must fit in ``max_bytes`` (default: this machine's
    physical memory); each failure is a ``ValueError``. ``dropout``, when given, replaces the saved one.
    """
    directory = Path(directory)
    check_directory(directory)
    get_implementation(attn_impl)  # an unknown name fails before any file is read
    if not is_file(directory / CONFIG_FILE):
        raise ValueError(f"{directory} has no {CONFIG_FILE}: not an attnlab GPT checkpoint")
    payload, config = _read_config(directory / CONFIG_FILE)
    if not is_file(directory / WEIGHTS_FILE):
        raise ValueError(f"{directory} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    with open_tensor_file(directory / WEIGHTS_FILE) as weights:
        source = str(weights.path)
        _check_pair(payload, weights.metadata, weights.path)
        check_layer_count("n_layers", config.n_layers, list(weights.infos), "blocks.", source, CONFIG_FILE)
        sizes = [
            SizeField("vocab_size", config.vocab_size, "tok_emb.weight", 0),
            SizeField("d_model", config.d_model, "tok_emb.weight", 1),
            SizeField("context_length", config.context_length, "pos_emb.weight", 0),
        ]
        check_sizes(sizes, weights.infos, source, CONFIG_FILE)
        check_tensors(state_shapes(config), weights.infos, source)
        if dropout is not None:
            config = replace(config, dropout=dropout)
        check_fits_in_memory(config, attn_impl, max_bytes)
        state = weights.load_all()
        check_finite(state, source)
    model = GPTModel(config, attn_impl=attn_impl)
    load_state(model, state)
    return model.eval()


def load_model(
    directory: str | Path,
    attn_impl: str = "sdpa",
    dropout: float | None = None,
    max_bytes: int | None = None,
) -> GPTModel:
    """An attnlab checkpoint (``attnlab_gpt.json``) or else a Hugging Face GPT-2 one (``config.json``)."""
    directory = Path(directory)
    check_directory(directory)
    if is_file(directory / CONFIG_FILE):
        return load_checkpoint(directory, attn_impl=attn_impl, dropout=dropout, max_bytes=max_bytes)
    if is_file(directory / "config.json"):
        return load_hf_gpt2(directory, attn_impl=attn_impl, dropout=dropout, max_bytes=max_bytes)
    raise ValueError(f"{directory} has neither {CONFIG_FILE} (attnlab) nor config.json (Hugging Face GPT-2)")
