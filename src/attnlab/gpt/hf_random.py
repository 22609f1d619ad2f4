"""A random GPT-2 checkpoint written by transformers itself: the same weights for attnlab and for transformers.

Benchmarks that compare attnlab's model with transformers' on a given size need a checkpoint of that
size; nothing is downloaded, so :func:`save_random_gpt2` builds ``GPT2LMHeadModel`` with random weights
(seeded) and saves it with ``save_pretrained``. :meth:`attnlab.gpt.GPTModel.from_hf` and
``AutoModelForCausalLM.from_pretrained`` then load the same directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import GPTConfig

__all__ = ["quiet_transformers", "save_random_gpt2"]


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars (writing shards, loading weights) for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "a transformers checkpoint needs the package 'transformers' (pip install transformers)",
            name="transformers",
        ) from None


def save_random_gpt2(config: GPTConfig, directory: str | Path, seed: int = 0) -> Path:
    """Write a ``GPT2LMHeadModel`` of ``config``'s shape with random weights (seeded; the caller's random
    state is untouched) into ``directory`` (config.json + model.safetensors); returns the directory."""
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    if not config.qkv_bias:
        raise ValueError("GPT-2 checkpoints have query/key/value biases: config.qkv_bias must be True")
    _require_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context_length,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    path = Path(directory)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        GPT2LMHeadModel(hf_config).eval().save_pretrained(path)
    return path
