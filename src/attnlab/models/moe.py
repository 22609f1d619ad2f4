"""A mixture of experts (MoE) in place of the dense feed-forward: each token goes through ``top_k`` of
``num_experts`` small feed-forward networks, chosen by a router (:mod:`.routing`), and gets their outputs'
weighted sum; shared experts (DeepSeek) see every token.

The computation is the plain one, written for reading, not speed: route every token, then loop over the
experts that received at least one token, run each on its tokens only, multiply by the routing weights and
``index_add_`` the results back to the tokens' rows. (Fast implementations group the tokens by expert and
run one grouped matrix multiplication; the arithmetic is the same.)

The experts are stored the way the checkpoints of their family store them, so that loading is a copy:

- :class:`ClampedSwiGLUExperts` (gpt-oss, chosen when ``moe.swiglu_alpha`` is set): stacked parameters,
  ``gate_up_proj`` (E, d_model, 2 d_expert) whose columns interleave gate and up (``0::2`` gate, ``1::2`` up),
  ``down_proj`` (E, d_expert, d_model), both used as ``x @ W`` (input features first, unlike ``nn.Linear``),
  and biases ``gate_up_proj_bias`` (E, 2 d_expert), ``down_proj_bias`` (E, d_model) when ``moe.expert_bias``.
  The activation is gpt-oss's clamped SwiGLU: gate clamped from above and up from both sides at
  ``swiglu_limit``, ``glu = gate * sigmoid(alpha * gate)``, output ``(up + 1) * glu``.
- :class:`SwiGLUExperts` (DeepSeek, Mixtral, Qwen-MoE): one :class:`~.feedforward.GatedMLP` per expert,
  ``experts.{j}.gate_proj/up_proj/down_proj``, plain SwiGLU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .feedforward import GatedMLP
from .routing import Router

if TYPE_CHECKING:
    from .config import DecoderConfig, MoEConfig

__all__ = ["ClampedSwiGLUExperts", "MoEFeedForward", "SwiGLUExperts"]


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A parameter initialised like ``nn.Linear``'s: uniform in +-1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class ClampedSwiGLUExperts(nn.Module):
    """gpt-oss's experts, stacked: ``run(j, x)`` maps the tokens x (m, d_model) sent to expert j to (m, d_model)."""

    def __init__(self, moe: MoEConfig, d_model: int) -> None:
        super().__init__()
        num, width = moe.num_experts, moe.d_expert
        self.alpha = moe.swiglu_alpha
        self.limit = moe.swiglu_limit
        self.gate_up_proj = _uniform((num, d_model, 2 * width), d_model)  # (E, d_model, 2 d_expert)
        self.down_proj = _uniform((num, width, d_model), width)  # (E, d_expert, d_model)
        self.gate_up_proj_bias = _uniform((num, 2 * width), d_model) if moe.expert_bias else None  # (E, 2 d_expert)
        self.down_proj_bias = _uniform((num, d_model), width) if moe.expert_bias else None  # (E, d_model)

    def activation(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(m, 2 d_expert) with interleaved gate/up columns -> (m, d_expert)."""
        gate, up = gate_up[:, 0::2], gate_up[:, 1::2]  # (m, d_expert) each
        if self.limit is not None:
            gate = gate.clamp(max=self.limit)  # large gates saturate; negative ones are left to the sigmoid
            up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)  # (m, d_expert)
        return (up + 1) * glu  # (m, d_expert)

    def run(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        gate_up = x @ self.gate_up_proj[expert]  # (m, 2 d_expert)
        if self.gate_up_proj_bias is not None:
            gate_up = gate_up + self.gate_up_proj_bias[expert]
        out = self.activation(gate_up) @ self.down_proj[expert]  # (m, d_model)
        if self.down_proj_bias is not None:
            out = out + self.down_proj_bias[expert]
        return out

    def extra_repr(self) -> str:
        num, d_model, width = self.gate_up_proj.shape
        return f"experts={num}, d_model={d_model}, d_expert={width // 2}, alpha={self.alpha}, limit={self.limit}"


class SwiGLUExperts(nn.ModuleList):
    """One SwiGLU :class:`~.feedforward.GatedMLP` per expert: ``run(j, x)`` is ``self[j](x)``, (m, d_model)."""

    def __init__(self, moe: MoEConfig, d_model: int) -> None:
        super().__init__(
            [GatedMLP(d_model, moe.d_expert, act="silu", bias=moe.expert_bias) for _ in range(moe.num_experts)]
        )

    def run(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        return self[expert](x)  # (m, d_model)


class MoEFeedForward(nn.Module):
    """The mixture of experts of ``config.moe``: (b, t, d_model) -> (b, t, d_model).

    Submodules: ``router`` (:class:`~.routing.Router`), ``experts`` (:class:`ClampedSwiGLUExperts` when
    ``swiglu_alpha`` is set, else :class:`SwiGLUExperts`), ``shared_experts`` (one SwiGLU of width
    ``d_expert * num_shared_experts``, as DeepSeek stores them; None without shared experts).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        moe = config.moe
        if moe is None:
            raise ValueError("MoEFeedForward needs config.moe (a MoEConfig)")
        if moe.swiglu_limit is not None and moe.swiglu_alpha is None:
            raise ValueError(
                f"moe swiglu_limit={moe.swiglu_limit} needs swiglu_alpha: the clamp belongs to gpt-oss's SwiGLU variant"
            )
        self.num_experts = moe.num_experts
        self.router = Router(moe, config.d_model)
        self.experts = (
            ClampedSwiGLUExperts(moe, config.d_model)
            if moe.swiglu_alpha is not None
            else SwiGLUExperts(moe, config.d_model)
        )
        self.shared_experts = (
            GatedMLP(config.d_model, moe.d_expert * moe.num_shared_experts, act="silu", bias=moe.expert_bias)
            if moe.num_shared_experts
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d_model = x.shape
        tokens = x.reshape(b * t, d_model)  # (n, d_model), n = b t
        weights, chosen = self.router(tokens)  # (n, top_k) each
        out = torch.zeros_like(tokens)  # (n, d_model)
        load = torch.bincount(chosen.flatten(), minlength=self.num_experts)  # (E,): tokens per expert
        for expert in load.nonzero().flatten().tolist():  # only the experts that got tokens
            token, slot = torch.where(chosen == expert)  # (m,) each: which tokens, in which of their top_k slots
            expert_out = self.experts.run(expert, tokens[token])  # (m, d_model)
            weighted = expert_out * weights[token, slot, None]  # (m, d_model)
            out.index_add_(0, token, weighted.to(out.dtype))  # each token gets the sum over its experts
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)  # (n, d_model): shared experts see every token
        return out.view(b, t, d_model)
