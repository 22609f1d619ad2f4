"""Training from scratch: ``attnlab train`` as a library.

- :class:`TrainConfig`: every setting, validated (:mod:`.config`);
- :func:`train`: the loop (:mod:`.loop`), on one process or N ranks under ``torchrun`` (:mod:`.distributed`:
  DDP, FSDP2, context parallelism);
- data: :func:`mqar_batch` (multi-query associative recall, :mod:`.mqar`) and :func:`load_text` (:mod:`.text`);
- :func:`build_model` (:mod:`.model`), :func:`learning_rate` (:mod:`.schedule`), checkpoints (:mod:`.checkpoint`).

See docs/training.md.
"""

from __future__ import annotations

from .config import TASKS, TrainConfig
from .loop import ProgressFn, train
from .model import PRESETS, build_model
from .mqar import IGNORE_INDEX, MQARSpec, batch_generator, mqar_batch
from .schedule import learning_rate
from .text import load_text

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "TASKS",
    "MQARSpec",
    "ProgressFn",
    "TrainConfig",
    "batch_generator",
    "build_model",
    "learning_rate",
    "load_text",
    "mqar_batch",
    "train",
]
