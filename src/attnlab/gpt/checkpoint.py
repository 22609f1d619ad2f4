"""attnlab's own GPT checkpoints: ``attnlab_gpt.json`` (the config) + ``attnlab_gpt.safetensors`` (weights).

Weights are written in the implementation-independent layout of :mod:`.state`, so a model saved with
one attention implementation loads into any other. Safetensors holds plain tensors only (no pickled
code) and refuses shared storage, which is why the tied head is stored once, as ``tok_emb.weight``.
:func:`load_model` also accepts a Hugging Face GPT-2 directory, which is what the CLI takes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .config import GPTConfig
from .hf import load_hf_gpt2
from .model import GPTModel
from .state import export_state, load_state

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_checkpoint", "load_model", "save_checkpoint"]

CONFIG_FILE = "attnlab_gpt.json"
WEIGHTS_FILE = "attnlab_gpt.safetensors"
_FORMAT = "attnlab-gpt/1"


def save_checkpoint(model: GPTModel, directory: str | Path) -> None:
    """Write ``model``'s config and weights into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous().cpu() for name, tensor in export_state(model).items()}
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": _FORMAT})
    payload = {"format": _FORMAT, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def load_checkpoint(directory: str | Path, attn_impl: str = "sdpa", dropout: float | None = None) -> GPTModel:
    """The model saved by :func:`save_checkpoint` in ``directory``, on ``attn_impl``, CPU, eval mode
    (``dropout``, when given, replaces the saved config's)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise ValueError(f"{directory} has no {CONFIG_FILE}: not an attnlab GPT checkpoint")
    payload = json.loads((directory / CONFIG_FILE).read_text())
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE} has format {payload.get('format')!r}, expected {_FORMAT!r}")
    config = GPTConfig.from_dict(payload["config"])
    if dropout is not None:
        config = replace(config, dropout=dropout)
    model = GPTModel(config, attn_impl=attn_impl)
    load_state(model, load_file(directory / WEIGHTS_FILE))
    return model.eval()


def load_model(directory: str | Path, attn_impl: str = "sdpa", dropout: float | None = None) -> GPTModel:
    """An attnlab checkpoint (``attnlab_gpt.json``) or else a Hugging Face GPT-2 one (``config.json``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"weights directory {directory} does not exist")
    if (directory / CONFIG_FILE).is_file():
        return load_checkpoint(directory, attn_impl=attn_impl, dropout=dropout)
    if (directory / "config.json").is_file():
        return load_hf_gpt2(directory, attn_impl=attn_impl, dropout=dropout)
    raise ValueError(f"{directory} has neither {CONFIG_FILE} (attnlab) nor config.json (Hugging Face GPT-2)")
