"""``torch_mha`` and ``torch_mha_fast``: PyTorch's own ``nn.MultiheadAttention``.

``torch_mha`` asks for the averaged attention weights (``need_weights=True``), which forces the
unfused path; ``torch_mha_fast`` passes ``need_weights=False`` so PyTorch may use SDPA inside.

Half precision: the unfused path, and the native inference fast path that ``torch_mha_fast`` takes in eval
mode without gradients (with q/k/v biases and an even number of heads), compute the attention scores in the
input dtype, so finite float16 inputs can give NaN (the scores overflow 65504) and bfloat16 rounds large
logits (see :mod:`attnlab.implementations.precision`). PyTorch offers no option to change that, so for
float16/bfloat16 inputs both modules run ``nn.MultiheadAttention`` on float32 copies of the input and the
parameters and cast the output back: the answer is right (gradients reach the half-precision parameters
through the casts), at float32's cost in time and memory, which half-precision benchmarks of these two
measure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ..weights import AttentionWeights
from .base import Capabilities, MultiHeadAttentionBase, copy_into
from .precision import HALF_PRECISION

__all__ = ["TorchMHAAttention", "TorchMHAFastAttention"]


class TorchMHAAttention(MultiHeadAttentionBase):
    """``nn.MultiheadAttention(batch_first=True)`` with a causal mask and ``need_weights=True``."""

    capabilities = Capabilities(needs_d_in_equal_d_out=True)  # its queries are projected at width d_out
    need_weights: ClassVar[bool] = True

    def __init__(
        self,
        *,
        d_in: int,
        d_out: int,
        num_heads: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__(
            d_in=d_in,
            d_out=d_out,
            num_heads=num_heads,
            context_length=context_length,
            dropout=dropout,
            qkv_bias=qkv_bias,
        )
        # bias=True gives the output projection its bias, as in every other implementation; the packed
        # q/k/v bias is then removed when qkv_bias is off (PyTorch accepts in_proj_bias=None).
        self.mha = nn.MultiheadAttention(d_out, num_heads, dropout=dropout, bias=True, batch_first=True)
        if not qkv_bias:
            self.mha.register_parameter("in_proj_bias", None)
        # True marks positions a query may NOT attend to (nn.MultiheadAttention's convention, the
        # opposite of SDPA's). Non-persistent: derived from context_length, not a learned weight.
        mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)  # (T, T)
        self.register_buffer("mask", mask, persistent=False)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        options = {
            "attn_mask": self.mask[:t, :t],  # (t, t)
            "is_causal": True,  # a hint that attn_mask is causal; the mask is still required
            "need_weights": self.need_weights,
        }
        if x.dtype not in HALF_PRECISION:
            context_vec, _ = self.mha(x, x, x, **options)  # (b, t, d_out)
            return context_vec
        # float32 copies of the parameters, swapped in for this call only; x32 is passed three times so that
        # PyTorch still sees self-attention (one packed projection, the fast path when eligible).
        params = {name: param.float() for name, param in self.mha.named_parameters()}
        x32 = x.float()  # (b, t, d_in)
        context_vec, _ = torch.func.functional_call(self.mha, params, (x32, x32, x32), options)  # (b, t, d_out)
        return context_vec.to(x.dtype)

    def set_weights(self, weights: AttentionWeights) -> None:
        self.check_weights(weights)
        copy_into(self.mha.in_proj_weight, torch.cat([weights.W_query, weights.W_key, weights.W_value]))
        if self.qkv_bias:
            copy_into(self.mha.in_proj_bias, torch.cat([weights.b_query, weights.b_key, weights.b_value]))
        copy_into(self.mha.out_proj.weight, weights.W_out)
        copy_into(self.mha.out_proj.bias, weights.b_out)

    def _export(self, pick: Callable[[nn.Parameter], torch.Tensor]) -> AttentionWeights:
        W_query, W_key, W_value = pick(self.mha.in_proj_weight).chunk(3)  # 3 x (d_out, d_in)
        b_query = b_key = b_value = None
        if self.qkv_bias:
            b_query, b_key, b_value = pick(self.mha.in_proj_bias).chunk(3)  # 3 x (d_out,)
        return AttentionWeights(
            W_query=W_query,
            W_key=W_key,
            W_value=W_value,
            W_out=pick(self.mha.out_proj.weight),
            b_out=pick(self.mha.out_proj.bias),
            b_query=b_query,
            b_key=b_key,
            b_value=b_value,
        )


class TorchMHAFastAttention(TorchMHAAttention):
    """``nn.MultiheadAttention`` with ``need_weights=False``: no averaged weights, so SDPA may run inside."""

    need_weights = False
