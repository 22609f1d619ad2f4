"""The learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

__all__ = ["learning_rate"]


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (so step 0 is not wasted
    on a rate of zero). Then a half cosine from ``lr`` down to ``min_lr``, reached at the last step.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps - 1
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)  # 0 at the end of warm-up, 1 at the last step
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
