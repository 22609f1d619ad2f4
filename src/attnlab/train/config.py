"""``TrainConfig``: every setting of a training run, validated when it is made (before any work or process group).

The defaults train the MQAR task (see :mod:`.mqar`) with the ``mha`` model to an accuracy above 0.9 on a
two-core CPU in a few minutes; docs/training.md has the measured numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .model import PRESETS
from .mqar import MQARSpec

__all__ = ["TASKS", "TrainConfig"]

#: The training tasks: synthetic associative recall, or next-token prediction on a text file.
TASKS: tuple[str, ...] = ("mqar", "text")
_DEVICES = ("cpu", "cuda", "auto")


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(name: str, value: object, minimum: float, *, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is the GLOBAL batch: with N data-parallel ranks each takes 1/N of it, so
    a run on N ranks computes the same losses as one process (see :mod:`.distributed`)."""

    task: str = "mqar"
    model: str = "mha"  # an attention design of .model.PRESETS
    attn_impl: str = "sdpa"  # an attention backend (attnlab.backends.BACKENDS)
    # data: MQAR (vocab_size, num_kv_pairs) or text (text_file, tokenizer: a tokenizer.json, else bytes 0..255)
    vocab_size: int = 64
    num_kv_pairs: int = 4
    num_queries: int | None = None  # MQAR queries per sequence (None: as many as fit)
    text_file: Path | None = None
    tokenizer: Path | None = None
    seq_len: int = 64
    # optimisation
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    seed: int = 0
    eval_seed: int = 1_000_003  # MQAR accuracy is measured on sequences drawn from this seed, never trained on
    eval_batches: int = 4
    # bookkeeping
    log_interval: int = 10
    eval_interval: int = 100
    checkpoint_interval: int = 200
    out_dir: Path | None = None
    resume: bool = False
    # parallelism and device
    fsdp: bool = False
    context_parallel: int = 1
    cp_strategy: str = "ring"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; known: {', '.join(PRESETS)}")
        for name in ("seq_len", "steps", "batch_size", "eval_batches", "log_interval", "eval_interval"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoint_interval", "seed", "eval_seed"):
            _positive_int(name, getattr(self, name), minimum=0)
        _positive_int("context_parallel", self.context_parallel)
        _number("lr", self.lr, 0.0, strict=True)
        _number("min_lr", self.min_lr, 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr:g} must not exceed lr {self.lr:g}")
        _number("weight_decay", self.weight_decay, 0.0)
        _number("grad_clip", self.grad_clip, 0.0)
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be fewer than steps {self.steps}")
        if self.task == "mqar":
            if self.eval_seed == self.seed:
                raise ValueError(f"eval_seed {self.eval_seed} equals seed: the evaluation must be held out")
            MQARSpec(self.vocab_size, self.seq_len, self.num_kv_pairs, self.num_queries)  # raises on a bad shape
            if self.text_file is not None or self.tokenizer is not None:
                raise ValueError("text_file and tokenizer belong to task 'text', not 'mqar'")
        elif self.text_file is None:
            raise ValueError("task 'text' needs a text_file")
        for name in ("text_file", "tokenizer", "out_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, Path)):
                raise ValueError(f"{name} must be a path, got {type(value).__name__}")
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        for name in ("fsdp", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(_DEVICES)}")
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir: the checkpoint to resume from is read there")
        if self.context_parallel > 1:
            from ..backends import BACKENDS
            from ..parallel import STRATEGIES

            if self.cp_strategy not in STRATEGIES:
                raise ValueError(f"unknown cp_strategy {self.cp_strategy!r}; known: {', '.join(STRATEGIES)}")
            chosen = BACKENDS.get(self.attn_impl)
            if self.cp_strategy != "ulysses" and chosen is not None and "return_lse" not in chosen.features:
                able = [name for name, backend in BACKENDS.items() if "return_lse" in backend.features]
                raise ValueError(
                    f"cp_strategy {self.cp_strategy!r} merges partial results on the log-sum-exp, which attn_impl "
                    f"{self.attn_impl!r} does not return; use one of: {', '.join(able)} (or cp_strategy 'ulysses')"
                )
            if self.seq_len % (2 * self.context_parallel) != 0:
                raise ValueError(
                    f"seq_len {self.seq_len} must be a multiple of 2 x context_parallel = "
                    f"{2 * self.context_parallel} (each rank holds two equal chunks of every sequence)"
                )

    def check_world(self, world_size: int) -> None:
        """Refuse a world size this run cannot use: ranks form ``world / context_parallel`` data-parallel groups,
        and the global batch must split evenly among them."""
        _positive_int("world_size", world_size)
        if world_size % self.context_parallel != 0:
            raise ValueError(f"world size {world_size} is not a multiple of context_parallel {self.context_parallel}")
        data_ranks = world_size // self.context_parallel
        if self.batch_size % data_ranks != 0:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over {data_ranks} data-parallel rank(s) "
                f"(world size {world_size} / context_parallel {self.context_parallel}): use a multiple of {data_ranks}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings), as written to ``config.json`` in the output directory."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
