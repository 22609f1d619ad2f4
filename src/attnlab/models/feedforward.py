"""The dense feed-forward networks: GPT-2's GELU MLP and the gated ones (SwiGLU, GeGLU).

A gated feed-forward multiplies two projections of the input, one through an activation (the gate), before
projecting back: ``down(act(gate(x)) * up(x))``. SwiGLU uses SiLU (Llama, Qwen, Mistral, DeepSeek's dense
layers), GeGLU the tanh-approximated GELU (Gemma). The names of the layers are Hugging Face's, so a
checkpoint's tensors load by name.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GatedMLP", "GeluMLP", "make_feedforward"]


class GeluMLP(nn.Module):
    """d_model -> d_ff -> d_model with GELU (tanh approximation), GPT-2's feed-forward."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))  # (b, t, d_model)


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``: SwiGLU (``act="silu"``) or GeGLU (``act="gelu"``)."""

    def __init__(self, d_model: int, d_ff: int, act: str, bias: bool = False) -> None:
        super().__init__()
        if act not in ("silu", "gelu"):
            raise ValueError(f"unknown gate activation {act!r}; use silu or gelu")
        self.act = act
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)  # (b, t, d_ff)
        gate = F.silu(gate) if self.act == "silu" else F.gelu(gate, approximate="tanh")
        return self.down_proj(gate * self.up_proj(x))  # (b, t, d_model)


def make_feedforward(kind: str, d_model: int, d_ff: int, bias: bool) -> nn.Module:
    """The dense feed-forward called ``kind`` (``gelu``, ``swiglu`` or ``geglu``)."""
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, bias=bias)
    if kind in ("swiglu", "geglu"):
        return GatedMLP(d_model, d_ff, act="silu" if kind == "swiglu" else "gelu", bias=bias)
    raise ValueError(f"unknown feed-forward {kind!r}; use gelu, swiglu or geglu (moe is built by the block)")
