"""What a whole-model benchmark run (``attnlab bench --model``) measures, validated before any work.

:func:`attnlab.gpt.bench.benchmark_model` takes these values as arguments; :class:`ModelBenchConfig`
checks them all up front (sizes, timing budget, seed, names, device, dtype) and estimates the memory the
run needs (:meth:`ModelBenchConfig.require_memory`), so that bad input is a clear ``ValueError`` instead of
error rows, a hang (``min_run_time=inf``) or the out-of-memory killer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..devices import resolve_device
from ..implementations import IMPLEMENTATIONS
from ..memory_guard import model_bench_bytes, require_memory
from ..registry import check_selection
from ..validate import check_positive_int, check_seed
from .config import DTYPES
from .devices import resolve_dtype
from .timing import check_timing_budget

if TYPE_CHECKING:
    from ..gpt.config import GPTConfig

__all__ = ["ModelBenchConfig"]


@dataclass(frozen=True)
class ModelBenchConfig:
    """Prefill ``prompt_len`` tokens and decode ``new_tokens`` with ``model`` on each of ``impls`` (None:
    every registered implementation)."""

    model: GPTConfig
    impls: tuple[str, ...] | None = None
    batch: int = 1
    prompt_len: int = 128
    new_tokens: int = 32
    device: str = "auto"
    dtype: str = "float32"
    min_run_time: float = 0.5  # seconds of timed calls per phase
    seed: int = 0

    def __post_init__(self) -> None:
        check_selection(self.impls)
        for name in ("batch", "prompt_len", "new_tokens"):
            check_positive_int(name, getattr(self, name))
        if self.prompt_len + self.new_tokens > self.model.context_length:
            raise ValueError(
                f"prompt_len {self.prompt_len} + new_tokens {self.new_tokens} = {self.prompt_len + self.new_tokens} "
                f"exceeds context_length {self.model.context_length}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        check_timing_budget(self.min_run_time)
        check_seed(self.seed)
        resolve_device(self.device)  # absent or unknown device: ValueError

    @property
    def impl_names(self) -> tuple[str, ...]:
        """The implementations to run: the given ones, or every registered one (read at call time)."""
        return self.impls if self.impls is not None else tuple(IMPLEMENTATIONS)

    def require_memory(self) -> None:
        """Raise ``ValueError`` naming the estimate and the free memory when the run cannot fit."""
        estimate = model_bench_bytes(
            self.model,
            self.impl_names,
            batch=self.batch,
            prompt_len=self.prompt_len,
            new_tokens=self.new_tokens,
            element_size=resolve_dtype(self.dtype).itemsize,
        )
        what = (
            f"benchmarking this model ({self.model.n_layers} layers, d_model {self.model.d_model}, batch "
            f"{self.batch}, {self.prompt_len} + {self.new_tokens} tokens)"
        )
        require_memory(estimate, resolve_device(self.device), what)
