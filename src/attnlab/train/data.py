"""The task's data behind one interface: ``batch(step)`` for training, ``eval_batches()`` for evaluation.

Every rank builds the same GLOBAL batch from ``(seed, step)`` and keeps its own rows (:mod:`.batching`), so
data parallelism changes nothing about which sequences a step trains on. The data position a checkpoint
records is just the step number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .mqar import MQARSpec, batch_generator, mqar_batch
from .text import load_text

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TrainData", "make_data"]


class TrainData:
    """Training and evaluation batches of one task; ``vocab_size`` sizes the model."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.text = None
        if config.task == "mqar":
            self.mqar = MQARSpec(config.vocab_size, config.seq_len, config.num_kv_pairs, config.num_queries)
            self.vocab_size = config.vocab_size
        else:
            self.text = load_text(config.text_file, config.seq_len, config.tokenizer)
            self.vocab_size = self.text.vocab_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch of training step ``step``: inputs, targets (batch_size, seq_len) int64."""
        if self.text is not None:
            return self.text.batch(self.config.batch_size, self.config.seed, step)
        return mqar_batch(self.mqar, self.config.batch_size, batch_generator(self.config.seed, step))

    def eval_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out batches: MQAR sequences from ``eval_seed`` (never trained on); for text, windows drawn
        from ``eval_seed`` (the same file: a measure of fit, not of generalisation)."""
        c = self.config
        if self.text is not None:
            return [self.text.batch(c.batch_size, c.eval_seed, i) for i in range(c.eval_batches)]
        return [mqar_batch(self.mqar, c.batch_size, batch_generator(c.eval_seed, i)) for i in range(c.eval_batches)]


def make_data(config: TrainConfig) -> TrainData:
    """The data of ``config.task``; a missing, empty or unreadable text file is a ``ValueError`` here."""
    return TrainData(config)
