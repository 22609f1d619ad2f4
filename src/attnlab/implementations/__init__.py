"""Every multi-head attention implementation, registered by name.

Each entry is an ``nn.Module`` class constructed the same way::

    module = IMPLEMENTATIONS["sdpa"](d_in=768, d_out=768, num_heads=12, context_length=1024)
    out = module(x)  # (b, t, d_in) -> (b, t, d_out), causal

with the same optional ``dropout``, ``qkv_bias``, ``num_kv_heads``, ``window``, ``softcap`` and ``sinks``;
each class's ``capabilities.features`` says which of the modern options it can take (it refuses the others).

Adding an implementation is one file in this folder and one line below.
"""

from __future__ import annotations

from .base import Capabilities, MultiHeadAttentionBase
from .ch03 import Ch03Attention
from .einsum import EinsumAttention
from .flash_torch import FlashTorchAttention
from .flash_triton import FlashTritonAttention
from .flex import FlexAttention
from .fused_qkv import FusedQKVAttention
from .sdpa import SDPAAttention
from .sdpa_mask import SDPAMaskAttention
from .torch_mha import TorchMHAAttention, TorchMHAFastAttention
from .wrapper import WrapperAttention

__all__ = ["IMPLEMENTATIONS", "Capabilities", "MultiHeadAttentionBase"]

IMPLEMENTATIONS: dict[str, type[MultiHeadAttentionBase]] = {
    "wrapper": WrapperAttention,
    "ch03": Ch03Attention,
    "fused_qkv": FusedQKVAttention,
    "einsum": EinsumAttention,
    "sdpa": SDPAAttention,
    "sdpa_mask": SDPAMaskAttention,
    "torch_mha": TorchMHAAttention,
    "torch_mha_fast": TorchMHAFastAttention,
    "flex": FlexAttention,
    "flash_torch": FlashTorchAttention,
    "flash_triton": FlashTritonAttention,
}
