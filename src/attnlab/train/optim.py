"""AdamW with weight decay on the weight matrices only (not on biases, norm weights or embeddings)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["make_optimizer", "set_learning_rate"]

BETAS = (0.9, 0.95)  # GPT-3's / Llama's choice for language-model training


def _no_decay(name: str, parameter: torch.Tensor) -> bool:
    return parameter.dim() < 2 or "emb" in name


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (a tied weight once): two groups, decayed and not."""
    decay, plain = [], []
    for name, parameter in model.named_parameters():  # named_parameters yields a shared tensor once
        if parameter.requires_grad:
            (plain if _no_decay(name, parameter) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
