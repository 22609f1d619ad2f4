"""Routers of a mixture of experts: which ``top_k`` experts each token goes to, and with what weight.

A router is a linear map from a token's features to one logit per expert (``weight`` (E, d_model), plus a
``bias`` (E,) when :attr:`~.config.MoEConfig.expert_bias` is set), followed by a rule that picks experts:

- ``softmax_topk`` (gpt-oss, Mixtral): the ``top_k`` largest logits; their weights are the softmax over those
  ``top_k`` logits only (``normalize_topk``; the same as the full softmax renormalised over the chosen), or,
  without ``normalize_topk``, the chosen experts' probabilities under the softmax over all experts (Qwen-MoE's
  ``norm_topk_prob=False``). Computed in the activations' dtype, as gpt-oss does.
- ``sigmoid_group`` (DeepSeek-V3): each expert gets an independent score ``sigmoid(logit)``. For *choosing*
  only, a per-expert ``e_score_correction_bias`` is added (trained outside back-propagation to balance the
  load, so it is a parameter without gradient here). The experts are split into ``num_groups`` groups of
  equal size; a group is worth the sum of its two best corrected scores; the ``topk_group`` best groups are
  kept and the ``top_k`` best experts among them are chosen. Their weights are their *uncorrected* sigmoid
  scores, divided by their sum when ``normalize_topk`` (plus 1e-20, as DeepSeek does). Computed in float32.

Both multiply the weights by ``routed_scaling``. The router's parameters take the model's dtype (transformers
keeps DeepSeek's ``gate.weight`` and correction bias in float32): in half precision, a near-tie between two
experts may then be broken the other way. :meth:`Router.forward` returns ``(weights (n, top_k),
experts (n, top_k))`` for ``n`` tokens; the order of the ``top_k`` columns carries no meaning.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import MoEConfig

__all__ = ["Router", "sigmoid_group_route", "softmax_topk_route"]


def softmax_topk_route(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and indices (n, top_k) of the ``top_k`` largest of ``logits`` (n, E), see the module docstring."""
    top_logits, chosen = torch.topk(logits, top_k, dim=-1)  # (n, top_k) each
    if normalize:
        return torch.softmax(top_logits, dim=-1), chosen  # (n, top_k): softmax over the chosen only
    return torch.softmax(logits, dim=-1).gather(-1, chosen), chosen  # (n, top_k): full softmax, chosen entries


def sigmoid_group_route(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    num_groups: int,
    topk_group: int,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's group-limited routing of ``logits`` (n, E) (float32), see the module docstring."""
    n, num_experts = logits.shape
    scores = logits.sigmoid()  # (n, E)
    for_choice = scores + correction_bias  # (n, E): the bias steers the choice, never the weights
    if topk_group < num_groups:
        grouped = for_choice.view(n, num_groups, num_experts // num_groups)  # (n, groups, E / groups)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (n, groups): each group's best two
        kept_groups = group_scores.topk(topk_group, dim=-1).indices  # (n, topk_group)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)  # (n, groups)
        keep = keep[:, :, None].expand_as(grouped).reshape(n, num_experts)  # (n, E)
        for_choice = for_choice.masked_fill(~keep, float("-inf"))  # (n, E): experts of dropped groups never win
    chosen = for_choice.topk(top_k, dim=-1).indices  # (n, top_k)
    weights = scores.gather(-1, chosen)  # (n, top_k)
    if normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)  # (n, top_k)
    return weights, chosen


class Router(nn.Module):
    """Tokens (n, d_model) -> ``(weights (n, top_k), experts (n, top_k))`` by the rule ``moe.router``.

    Parameters: ``weight`` (E, d_model); ``bias`` (E,) when ``moe.expert_bias``; ``e_score_correction_bias``
    (E,), without gradient, for ``sigmoid_group``. Refuses, by name, settings its rule cannot honour.
    """

    def __init__(self, moe: MoEConfig, d_model: int) -> None:
        super().__init__()
        num_experts = moe.num_experts
        if moe.router == "softmax_topk" and (moe.num_groups != 1 or moe.topk_group != 1):
            raise ValueError(
                f"moe num_groups={moe.num_groups}, topk_group={moe.topk_group}: group-limited routing belongs to the "
                "sigmoid_group router; softmax_topk needs num_groups=1 and topk_group=1"
            )
        if moe.router == "sigmoid_group":
            group_size = num_experts // moe.num_groups
            if moe.topk_group < moe.num_groups and group_size < 2:
                raise ValueError(
                    f"moe num_experts / num_groups = {group_size}: sigmoid_group scores a group by its best two "
                    "experts, so groups need at least 2 experts"
                )
            if moe.top_k > moe.topk_group * group_size:
                raise ValueError(
                    f"moe top_k {moe.top_k} exceeds the {moe.topk_group * group_size} experts of the topk_group="
                    f"{moe.topk_group} kept groups of {group_size}"
                )
        self.rule = moe.router
        self.top_k = moe.top_k
        self.num_groups = moe.num_groups
        self.topk_group = moe.topk_group
        self.normalize = moe.normalize_topk
        self.scaling = moe.routed_scaling
        bound = 1 / math.sqrt(d_model)  # nn.Linear's initialisation
        self.weight = nn.Parameter(torch.empty(num_experts, d_model).uniform_(-bound, bound))  # (E, d_model)
        self.bias = nn.Parameter(torch.empty(num_experts).uniform_(-bound, bound)) if moe.expert_bias else None
        self.e_score_correction_bias = (
            nn.Parameter(torch.zeros(num_experts), requires_grad=False) if moe.router == "sigmoid_group" else None
        )  # (E,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rule == "softmax_topk":
            logits = nn.functional.linear(x, self.weight, self.bias)  # (n, E)
            weights, chosen = softmax_topk_route(logits, self.top_k, self.normalize)  # (n, top_k) each
        else:
            bias = None if self.bias is None else self.bias.float()
            logits = nn.functional.linear(x.float(), self.weight.float(), bias)  # (n, E) float32
            weights, chosen = sigmoid_group_route(
                logits,
                self.e_score_correction_bias.float(),
                self.top_k,
                self.num_groups,
                self.topk_group,
                self.normalize,
            )  # (n, top_k) each
        if self.scaling != 1.0:
            weights = weights * self.scaling  # (n, top_k)
        return weights, chosen

    def extra_repr(self) -> str:
        return f"{self.rule}, experts={self.weight.shape[0]}, top_k={self.top_k}"
