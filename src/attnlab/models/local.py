"""Running a local checkpoint directory: which model reads it, on which attention, checked before loading.

attnlab has two models that read checkpoints:

- :class:`attnlab.gpt.GPTModel`, the book's GPT-2, on a multi-head *implementation* (``impl``: ``sdpa``,
  ``ch03``, ``einsum``, ...; :data:`attnlab.implementations.IMPLEMENTATIONS`). It reads attnlab's own
  format (``attnlab_gpt.json``) and Hugging Face GPT-2 directories.
- :class:`attnlab.models.Decoder`, every architecture of :mod:`attnlab.models` (Llama 3, Qwen 2/3,
  Mistral, Gemma 2/3, GPT-2, ...), on an attention *backend* (``attn_impl``: ``naive``, ``sdpa``,
  ``flash_torch``, ...; :data:`attnlab.backends.BACKENDS`).

:func:`plan_local_run` decides: attnlab's format goes to ``GPTModel``; a Hugging Face GPT-2 directory (a
``config.json`` whose ``model_type`` is ``gpt2`` or absent) too, unless an ``attn_impl`` is asked for;
every other ``model_type`` goes to ``Decoder``. Everything that can be checked without the weights is
checked first, in the order a mistake is cheapest to report: the attention name and whether it runs on
the device, then the directory and its config, then whether the backend does every attention feature the
architecture needs (a sliding window, a logit softcap, sinks): an option the backend cannot honour is an
error naming it and the backends that can, never ignored. Without ``attn_impl``, ``Decoder`` gets the first
backend of :data:`PREFERRED_BACKENDS` that does all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..backends import BACKENDS
from ..gpt.checkpoint import CONFIG_FILE as ATTNLAB_CONFIG_FILE
from ..gpt.files import check_directory, is_file, read_json_object
from ..gpt.options import GenerationOptions, check_runnable
from .attention import get_backend, layer_features
from .config import DecoderConfig
from .hf import read_config

__all__ = [
    "DEFAULT_IMPL",
    "PREFERRED_BACKENDS",
    "LocalRun",
    "check_backend",
    "choose_backend",
    "needed_features",
    "plan_local_run",
]

#: The multi-head implementation of GPTModel when none is named.
DEFAULT_IMPL = "sdpa"
#: Without an ``attn_impl``, a Decoder runs on the first of these that does every feature its layers need.
PREFERRED_BACKENDS = ("sdpa", "sdpa_mask", "flash_torch", "naive")


def needed_features(config: DecoderConfig) -> dict[str, str]:
    """The backend features the model's layers need, each with what in the config asks for it."""
    why = {
        "gqa": f"{config.num_kv_heads} key/value heads for {config.num_heads} query heads",
        "window": "sliding window " + ", ".join(sorted({str(w) for w in config.layer_windows if w is not None})),
        "softcap": f"attention logit softcap {config.attn_softcap:g}" if config.attn_softcap else "",
        "sinks": "attention sinks",
    }
    wanted = {feature for layer in range(config.n_layers) for feature in layer_features(config, layer)}
    return {feature: reason for feature, reason in why.items() if feature in wanted}


def _runs_here(name: str, device: torch.device) -> str | None:
    return BACKENDS[name].unsupported_reason(device.type, "forward")


def check_backend(attn_impl: str, device: torch.device, config: DecoderConfig | None = None) -> None:
    """``ValueError`` unless backend ``attn_impl`` exists, runs on ``device`` and (given ``config``) does every
    attention feature that model needs; the message names the feature and the backends that can."""
    get_backend(attn_impl)  # unknown name: lists the backends
    if (reason := _runs_here(attn_impl, device)) is not None:
        raise ValueError(f"attention backend {attn_impl!r} cannot run on {device.type}: it {reason}")
    if config is None:
        return
    needed = needed_features(config)
    for feature, reason in needed.items():
        if feature not in BACKENDS[attn_impl].features:
            able = [
                name
                for name, backend in BACKENDS.items()
                if set(needed) <= backend.features and _runs_here(name, device) is None
            ]
            raise ValueError(
                f"the {attn_impl} backend does not support {feature}, which this {config.model_type} model needs "
                f"({reason}); backends that run it on {device.type}: {', '.join(able) or 'none'}"
            )


def choose_backend(config: DecoderConfig, device: torch.device) -> str:
    """The first of :data:`PREFERRED_BACKENDS` that runs ``config``'s layers on ``device``."""
    for name in PREFERRED_BACKENDS:
        try:
            check_backend(name, device, config)
        except ValueError:
            continue
        return name
    raise ValueError(f"none of the backends {', '.join(PREFERRED_BACKENDS)} runs this {config.model_type} model")


def _hf_model_type(directory: Path) -> str | None:
    """``model_type`` of ``directory/config.json`` (None when it names none: old GPT-2 checkpoints)."""
    path = directory / "config.json"
    if not is_file(path):
        return None  # the loader names what is missing
    model_type = read_json_object(path).get("model_type")
    return model_type if isinstance(model_type, str) else None


@dataclass(frozen=True)
class LocalRun:
    """How to run checkpoint ``directory``: ``engine`` ``gpt`` (:class:`~attnlab.gpt.GPTModel` on
    implementation ``attention``) or ``decoder`` (:class:`~attnlab.models.Decoder` on backend ``attention``,
    ``config`` already read and checked), on ``device``."""

    directory: Path
    engine: str
    attention: str
    device: torch.device
    config: DecoderConfig | None = None

    def load(self) -> nn.Module:
        """The model, in eval mode, on ``device`` (the weights are read now)."""
        if self.engine == "gpt":
            from ..gpt import load_model

            return load_model(self.directory, attn_impl=self.attention).to(self.device)
        from .hf import from_hf

        return from_hf(self.directory, self.attention, device=self.device)

    def steps(self, model: nn.Module, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[torch.Tensor]:
        """Each new token, (1,), of continuing ``prompt_ids``; the arguments are checked now, not at the first step.
        The Decoder stops at the checkpoint's end-of-sequence ids unless ``options.eos_id`` names one."""
        if self.engine == "gpt":
            from ..gpt import iter_generate as gpt_steps

            idx = torch.tensor([list(prompt_ids)], device=self.device)  # (1, t)
            generator = options.make_generator(self.device)
            return gpt_steps(model, idx, options.max_new_tokens, **options.generate_kwargs(), generator=generator)
        from .generate import iter_generate

        total = len(prompt_ids) + options.max_new_tokens
        if total > model.config.context_length:
            raise ValueError(
                f"prompt length {len(prompt_ids)} + max_new_tokens {options.max_new_tokens} = {total} exceeds "
                f"context_length {model.config.context_length}"
            )
        vocab_size = model.config.vocab_size
        if options.eos_id is not None and options.eos_id >= vocab_size:
            raise ValueError(f"eos_id must be a token id in [0, {vocab_size}), got {options.eos_id!r}")
        return iter_generate(model, [list(prompt_ids)], options)


def plan_local_run(
    directory: str | Path,
    device: torch.device,
    *,
    impl: str | None = None,
    attn_impl: str | None = None,
    use_cache: bool = True,
) -> LocalRun:
    """Which model runs ``directory`` on which attention (see the module docstring); every check that needs no
    weights is done here. ``impl`` and ``attn_impl`` are alternatives: give at most one."""
    if impl is not None and attn_impl is not None:
        raise ValueError(
            f"impl={impl!r} (an implementation of attnlab's GPT-2) and attn_impl={attn_impl!r} (a backend of "
            "attnlab.models) are alternatives; give one"
        )
    if impl is not None:
        check_runnable(impl, device, use_cache)
    if attn_impl is not None:
        check_backend(attn_impl, device)
    directory = Path(directory)
    check_directory(directory)
    gpt = is_file(directory / ATTNLAB_CONFIG_FILE) or _hf_model_type(directory) in (None, "gpt2")
    if gpt and attn_impl is None:
        if impl is None:
            check_runnable(DEFAULT_IMPL, device, use_cache)
        return LocalRun(directory, "gpt", impl or DEFAULT_IMPL, device)
    if is_file(directory / ATTNLAB_CONFIG_FILE):
        raise ValueError(
            f"{directory} is an attnlab GPT checkpoint, which runs on an implementation (impl), not on a backend "
            f"(attn_impl={attn_impl!r})"
        )
    config = read_config(directory)
    if impl is not None:
        raise ValueError(
            f"a {config.model_type} checkpoint runs on attnlab.models, whose attention is a backend: name it with "
            f"attn_impl (one of {', '.join(BACKENDS)}), not impl={impl!r}"
        )
    if attn_impl is None:
        return LocalRun(directory, "decoder", choose_backend(config, device), device, config)
    check_backend(attn_impl, device, config)
    return LocalRun(directory, "decoder", attn_impl, device, config)
