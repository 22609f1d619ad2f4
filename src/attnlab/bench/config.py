"""What one benchmark run measures: a validated :class:`BenchConfig`, its presets and an optional sweep.

A config describes sizes (batch, tokens, model width, heads), the implementations, device, dtype and
modes, and the timing budget. Presets give the sizes for the usual questions: ``quick`` (a smoke run
that finishes in well under two minutes on a 2-core CPU, the CPU default), ``notebook`` (the
configuration of the notebook this project started from, the default on GPUs) and ``long`` (long
sequences, for GPUs). A :class:`Sweep` varies one size over several values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..implementations import IMPLEMENTATIONS
from ..implementations.base import Mode
from ..registry import check_selection
from ..validate import check_positive_int, check_seed
from .timing import check_timing_budget
from .variant import PLAIN, AttentionVariant

__all__ = [
    "DEVICES",
    "DTYPES",
    "MODES",
    "PRESETS",
    "SWEEP_KEYS",
    "BenchConfig",
    "Preset",
    "Sweep",
    "default_preset",
]

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
MODES: tuple[Mode, ...] = ("forward", "backward")
#: The sizes a sweep may vary (config field names).
SWEEP_KEYS: tuple[str, ...] = ("batch", "seq_len", "d_model", "num_heads")
#: Spellings accepted on the command line for each sweep key.
_SWEEP_ALIASES = {
    "batch": "batch",
    "seq": "seq_len",
    "seq_len": "seq_len",
    "seq-len": "seq_len",
    "d_model": "d_model",
    "d-model": "d_model",
    "heads": "num_heads",
    "num_heads": "num_heads",
}


@dataclass(frozen=True)
class Preset:
    """Sizes and timing budget for one kind of run."""

    batch: int
    seq_len: int
    d_model: int
    num_heads: int
    min_run_time: float  # seconds of timed calls per case
    min_samples: int  # at least this many timed samples per case, so the spread means something
    description: str


PRESETS: dict[str, Preset] = {
    "quick": Preset(2, 256, 256, 4, 0.2, 5, "smoke run, all implementations in < 2 min on a 2-core CPU"),
    "notebook": Preset(8, 1024, 768, 12, 1.0, 3, "the notebook's configuration (GPT-2 small attention)"),
    "long": Preset(1, 8192, 1024, 16, 1.0, 5, "long sequences, for GPUs"),
}


def default_preset(device_type: str) -> str:
    """``quick`` on the CPU (a default run must stay short there), ``notebook`` on GPUs."""
    return "quick" if device_type == "cpu" else "notebook"


@dataclass(frozen=True)
class Sweep:
    """Vary one size (``batch``, ``seq_len``, ``d_model`` or ``num_heads``) over ``values``."""

    key: str
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.key not in SWEEP_KEYS:
            raise ValueError(f"cannot sweep {self.key!r}; sweepable sizes: {', '.join(SWEEP_KEYS)}")
        if not self.values:
            raise ValueError(f"sweep over {self.key} needs at least one value")
        for value in self.values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sweep value {value!r} for {self.key} must be a positive integer")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"sweep values for {self.key} repeat: {self.values}")

    @classmethod
    def parse(cls, text: str) -> Sweep:
        """``"seq=256,512,1024"`` -> ``Sweep("seq_len", (256, 512, 1024))`` (also batch, d-model, heads)."""
        key, sep, values = text.partition("=")
        if not sep:
            raise ValueError(f"sweep {text!r} must look like KEY=v1,v2,... (e.g. seq=256,512,1024)")
        name = _SWEEP_ALIASES.get(key.strip())
        if name is None:
            raise ValueError(f"cannot sweep {key.strip()!r}; use one of: batch, seq, d-model, heads")
        try:
            # An empty item ("4,,8") is an error too, not skipped; nothing at all ("seq=") is "no value" below.
            numbers = tuple(int(v) for v in values.split(",")) if values.strip() else ()
        except ValueError:
            raise ValueError(f"sweep values {values!r} must be comma-separated integers") from None
        return cls(name, numbers)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``impls=None`` means every registered implementation (including ones added
    later); sizes are those of one point, which ``sweep`` (if given) varies."""

    impls: tuple[str, ...] | None = None
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch: int = PRESETS["quick"].batch
    seq_len: int = PRESETS["quick"].seq_len
    d_model: int = PRESETS["quick"].d_model
    num_heads: int = PRESETS["quick"].num_heads
    modes: tuple[Mode, ...] = MODES
    compile: bool = False  # also time torch.compile'd modules (compile time reported separately)
    sweep: Sweep | None = None
    seed: int = 0
    min_run_time: float = PRESETS["quick"].min_run_time
    min_samples: int = PRESETS["quick"].min_samples
    accuracy_tokens: int = 128  # tokens of batch element 0 compared with the float64 reference
    peak_matmul_size: int | None = None  # n of the n x n matmul that measures the peak; None: by device
    measure_memory: bool = True
    preset: str | None = None  # informational: the preset the sizes came from
    variant: AttentionVariant = PLAIN  # GQA, window, softcap, sinks, packing (plain by default)

    def __post_init__(self) -> None:
        check_selection(self.impls)
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)} (or cuda:N)")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes {self.modes!r} must be a non-empty subset of {MODES}")
        check_positive_int("accuracy_tokens", self.accuracy_tokens)
        check_timing_budget(self.min_run_time, self.min_samples)  # finite seconds: inf or nan never finish
        if self.peak_matmul_size is not None:
            check_positive_int("peak_matmul_size", self.peak_matmul_size)
        check_seed(self.seed)
        if not isinstance(self.variant, AttentionVariant):
            raise ValueError(f"variant must be an AttentionVariant, got {type(self.variant).__name__}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        for point in self.points():
            point._check_sizes()

    def _check_sizes(self) -> None:
        for name in SWEEP_KEYS:
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        self.variant.check(self.num_heads)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BenchConfig:
        """The config of preset ``name``; keyword arguments (any field) override it.

        A size that ``sweep`` varies cannot also be given: the sweep would silently replace it.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        sweep = overrides.get("sweep")
        if isinstance(sweep, Sweep) and sweep.key in overrides:
            raise ValueError(
                f"{sweep.key} {overrides[sweep.key]!r} is given and also swept over {list(sweep.values)}; give one"
            )
        preset = asdict(PRESETS[name])
        del preset["description"]
        return cls(**{**preset, "preset": name, **overrides})

    @property
    def impl_names(self) -> tuple[str, ...]:
        """The implementations to run: the given ones, or every registered one (read at call time)."""
        return self.impls if self.impls is not None else tuple(IMPLEMENTATIONS)

    def points(self) -> list[BenchConfig]:
        """One config per sweep value (just ``[self]`` without a sweep), each with ``sweep=None``."""
        if self.sweep is None:
            return [self]
        return [replace(self, sweep=None, **{self.sweep.key: value}) for value in self.sweep.values]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["sweep"] = None if self.sweep is None else {"key": self.sweep.key, "values": list(self.sweep.values)}
        out["impls"] = list(self.impl_names)
        out["modes"] = list(self.modes)
        out["variant"] = asdict(self.variant)
        return out
