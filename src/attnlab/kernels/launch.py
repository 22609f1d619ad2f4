"""Launching the FlashAttention kernels: grids, strides, dtypes and block configurations.

Inputs may have any strides (a (b, t, h, d) buffer viewed as (b, h, t, d) needs no copy); outputs are
allocated here. Importing this module imports Triton.
"""

from __future__ import annotations

import torch
import triton

from .config import KernelConfig
from .flash_bwd import flash_bwd_dkdv_kernel, flash_bwd_dq_kernel
from .flash_fwd import flash_fwd_kernel

__all__ = ["launch_backward", "launch_forward"]

LOG2E = 1.4426950408889634


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs get true float32 products ("ieee"); the default "tf32" would cost ~1e-3 of accuracy.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs at least 16 along the reduction


def launch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, config: KernelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: ``(out, lse)``, out (b, h, t_q, d) in q's dtype, lse (b, h, t_q) float32."""
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[2]
    out = torch.empty(b, h, t_q, head_dim, dtype=q.dtype, device=q.device)  # (b, h, t_q, d)
    lse = torch.empty(b, h, t_q, dtype=torch.float32, device=q.device)  # (b, h, t_q)
    grid = (triton.cdiv(t_q, config.block_m), b * h)
    flash_fwd_kernel[grid](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        h, t_q, t_k, scale * LOG2E,
        CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse


def launch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    dq_config: KernelConfig,
    dkdv_config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the dq kernel (which also writes ``delta``), then the dk/dv kernel that reads it."""
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty(b, h, t_q, dtype=torch.float32, device=q.device)  # (b, h, t_q) = rowsum(dO * O)
    common = dict(CAUSAL=causal, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), DOT_PRECISION=_dot_precision(q.dtype))
    flash_bwd_dq_kernel[(triton.cdiv(t_q, dq_config.block_m), b * h)](
        q, k, v, out, dout, dq, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(dout), *_strides(dq),
        h, t_q, t_k, scale,
        BLOCK_M=dq_config.block_m, BLOCK_N=dq_config.block_n,
        num_warps=dq_config.num_warps, num_stages=dq_config.num_stages, **common,
    )  # fmt: skip
    flash_bwd_dkdv_kernel[(triton.cdiv(t_k, dkdv_config.block_n), b * h)](
        q, k, v, dout, dk, dv, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        h, t_q, t_k, scale,
        BLOCK_M=dkdv_config.block_m, BLOCK_N=dkdv_config.block_n,
        num_warps=dkdv_config.num_warps, num_stages=dkdv_config.num_stages, **common,
    )  # fmt: skip
    return dq, dk, dv
