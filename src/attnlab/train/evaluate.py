"""Held-out evaluation: the mean loss and the accuracy over the answer positions (targets not ignored).

For MQAR the accuracy is the fraction of queried keys whose value the model predicts (argmax); for text, the
next-token accuracy. Every rank evaluates its rows (and, with context parallelism, its tokens); the sums are
added over ranks, so every rank returns the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .distributed import all_sum
from .mqar import IGNORE_INDEX

if TYPE_CHECKING:
    from .distributed import Ranks

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    ranks: Ranks,
) -> dict[str, float]:
    """``forward(inputs, targets)`` maps a global batch to this rank's (logits (n, V), targets (n,)) rows."""
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct answers, answers
    for inputs, targets in batches:
        logits, local_targets = forward(inputs, targets)  # (n, V), (n,)
        answers = local_targets != IGNORE_INDEX  # (n,)
        loss = F.cross_entropy(logits.float(), local_targets, ignore_index=IGNORE_INDEX, reduction="sum")
        correct = (logits.argmax(dim=-1) == local_targets)[answers].sum()
        totals += torch.stack([loss.double().cpu(), correct.double().cpu(), answers.sum().double().cpu()])
    totals = all_sum(totals.to(ranks.device), ranks).cpu()
    count = max(totals[2].item(), 1.0)
    return {"eval_loss": totals[0].item() / count, "accuracy": totals[1].item() / count}
