"""What a decode benchmark run (``attnlab bench --model ... --decode``) measures, validated before any work.

One row per (implementation, weight quantization, context length): greedy decoding of ``new_tokens``
tokens after a prompt of ``context`` tokens, timed; plus, per context length, the same decoding by
transformers' ``generate`` on the same checkpoint (``reference``). See :mod:`attnlab.bench.decode_run`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..devices import resolve_device
from ..memory_guard import RUNTIME_OVERHEAD, require_memory
from ..quantize import MODES
from ..registry import check_selection, get_backend, get_implementation
from ..validate import check_positive_int, check_seed
from .bandwidth import default_bandwidth_bytes
from .config import DTYPES
from .devices import resolve_dtype
from .timing import check_timing_budget

if TYPE_CHECKING:
    from ..gpt.config import GPTConfig

__all__ = ["QUANT_MODES", "DecodeBenchConfig"]

#: Weight formats a decode run can compare: the model's own dtype ("none") and :data:`attnlab.quantize.MODES`.
QUANT_MODES = ("none", *MODES)


def _check_names(what: str, values: tuple, allowed: tuple[str, ...] | None = None) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{what} must be a non-empty tuple, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat: {', '.join(map(str, values))}")
    if allowed is not None:
        for value in values:
            if value not in allowed:
                raise ValueError(f"unknown {what[:-1]} {value!r}; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class DecodeBenchConfig:
    """Decode ``new_tokens`` greedy tokens after ``context`` prompt tokens, for each context in ``contexts``,
    with ``model`` on each implementation in ``impls`` and each weight format in ``quants``.

    ``decoder``: run :class:`attnlab.models.Decoder` (loaded from the same checkpoint) instead of
    :class:`attnlab.gpt.GPTModel`; ``impls`` then name attention backends (``attnlab.backends.BACKENDS``).
    ``compile`` (Decoder only): static cache and a ``torch.compile``'d decode step."""

    model: GPTConfig
    impls: tuple[str, ...] = ("sdpa",)
    quants: tuple[str, ...] = ("none", "int8")
    contexts: tuple[int, ...] = (128, 512, 1000)
    new_tokens: int = 16  # decode steps per timed call (their mean is the time per token)
    batch: int = 1
    device: str = "auto"
    dtype: str = "float32"
    min_run_time: float = 0.5  # seconds of timed calls per row
    seed: int = 0
    reference: bool = True  # also time transformers' generate on the same checkpoint
    bandwidth_bytes: int | None = None  # size of the bandwidth probe (None: .bandwidth.default_bandwidth_bytes)
    decoder: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("decoder", "compile", "reference"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.compile and not self.decoder:
            raise ValueError("compile needs decoder=True (CLI: --decoder): GPTModel's cache changes shape every step")
        if self.impls is None or not isinstance(self.impls, tuple):
            raise ValueError(f"impls must be a tuple of names to decode with, e.g. ('sdpa',), got {self.impls!r}")
        if self.decoder:
            _check_names("impls", self.impls)
            for name in self.impls:
                get_backend(name)  # unknown names: ValueError listing the valid ones
        else:
            check_selection(self.impls)
            for name in self.impls:
                if not get_implementation(name).supports_kv_cache():
                    raise ValueError(f"implementation {name!r} has no KV-cache path; a decode benchmark needs one")
        _check_names("quants", self.quants, QUANT_MODES)
        _check_names("contexts", self.contexts)
        for name in ("new_tokens", "batch"):
            check_positive_int(name, getattr(self, name))
        for context in self.contexts:
            check_positive_int("context", context)
            if context + self.new_tokens > self.model.context_length:
                raise ValueError(
                    f"context {context} + new_tokens {self.new_tokens} = {context + self.new_tokens} exceeds the "
                    f"model's context_length {self.model.context_length}"
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        check_timing_budget(self.min_run_time)
        check_seed(self.seed)
        if self.bandwidth_bytes is not None:
            check_positive_int("bandwidth_bytes", self.bandwidth_bytes)
        device = resolve_device(self.device)  # absent or unknown device: ValueError
        if "int4" in self.quants and (device.type != "cuda" or self.dtype != "bfloat16"):
            raise ValueError(
                f"quant 'int4' needs device cuda and dtype bfloat16 (torchao's int4 kernel), got device "
                f"{device.type!r} and dtype {self.dtype!r}; use int8"
            )

    def require_packages(self) -> None:
        """Raise ``ValueError`` naming the package when one the run needs is not installed: torchao to
        quantize, transformers for the reference row (checked before any work, not halfway through)."""
        needed = {"torchao": any(quant != "none" for quant in self.quants), "transformers": self.needs_checkpoint}
        for package, wanted in needed.items():
            if wanted and importlib.util.find_spec(package) is None:
                what = "quantizing weights (quants other than none)" if package == "torchao" else "the checkpoint"
                raise ValueError(f"{what} needs the package {package!r}: pip install {package}")

    @property
    def needs_checkpoint(self) -> bool:
        """Whether the run writes a transformers checkpoint: for the reference row, and to load the Decoder."""
        return self.reference or self.decoder

    @property
    def probe_bytes(self) -> int:
        """Bytes the bandwidth probe reads: ``bandwidth_bytes``, or a size well beyond the device's caches."""
        return self.bandwidth_bytes or default_bandwidth_bytes(resolve_device(self.device))

    def memory_estimate(self) -> int:
        """Upper estimate of the run's peak bytes: every (implementation, weight format) model kept in the
        run's dtype (a quantized one is built in it first), transformers' copy, each model's KV cache at the
        longest context, the bandwidth probe and the libraries' overhead."""
        from ..gpt.params import count_parameters  # the gpt package imports the bench package: not at import

        element_size = resolve_dtype(self.dtype).itemsize
        model = count_parameters(self.model) * max(element_size, 4)  # loaded as float32 before the cast
        copies = len(self.impls) * len(self.quants) + self.reference
        tokens = max(self.contexts) + self.new_tokens
        cache = 2 * self.model.n_layers * self.batch * tokens * self.model.d_model * element_size
        logits = self.batch * max(self.contexts) * self.model.vocab_size * 4  # the prompt's logits
        probe = self.probe_bytes
        return copies * (model + cache) + logits + probe + RUNTIME_OVERHEAD

    def require_memory(self) -> None:
        """Raise ``ValueError`` naming the estimate and the free memory when the run cannot fit."""
        what = (
            f"the decode benchmark ({len(self.impls) * len(self.quants)} models of {self.model.n_layers} layers, "
            f"d_model {self.model.d_model}, up to {max(self.contexts) + self.new_tokens} tokens)"
        )
        require_memory(self.memory_estimate(), resolve_device(self.device), what)
