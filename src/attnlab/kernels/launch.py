"""Launching the FlashAttention kernels: grids, strides, dtypes and block configurations.

Inputs may have any strides (a (b, t, h, d) buffer viewed as (b, h, t, d) needs no copy); outputs are
allocated here. Importing this module imports Triton (and, in interpreter mode, applies
:mod:`.interpreter_compat`).
"""

from __future__ import annotations

import torch
import triton

from .config import KernelConfig
from .flash_bwd import flash_bwd_dkdv_kernel, flash_bwd_dq_kernel
from .flash_fwd import flash_fwd_kernel
from .interpreter_compat import apply_interpreter_fix

__all__ = ["launch_backward", "launch_backward_dkdv", "launch_backward_dq", "launch_forward"]

LOG2E = 1.4426950408889634

apply_interpreter_fix()  # only under TRITON_INTERPRET=1 with NumPy >= 2.4 and Triton <= 3.6


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
    flash_fwd_kernel[(b * h, triton.cdiv(t_q, config.block_m))](
        q, k, v, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        h, t_q, t_k, scale * LOG2E,
        **_constexprs(q, causal, config),
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
    dq, delta = launch_backward_dq(dout, q, k, v, out, lse, causal, scale, dq_config)
    dk, dv = launch_backward_dkdv(dout, q, k, v, lse, delta, causal, scale, dkdv_config)
    return dq, dk, dv


def _constexprs(q: torch.Tensor, causal: bool, config: KernelConfig) -> dict:
    head_dim = q.shape[-1]
    return dict(
        CAUSAL=causal,
        HEAD_DIM=head_dim,
        BLOCK_D=_block_d(head_dim),
        DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def launch_backward_dq(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dq kernel: ``(dq, delta)`` with delta (b, h, t_q) = rowsum(dO * O) in float32."""
    b, h, t_q, _ = q.shape
    dq = torch.empty_like(q)  # (b, h, t_q, d)
    delta = torch.empty(b, h, t_q, dtype=torch.float32, device=q.device)  # (b, h, t_q)
    flash_bwd_dq_kernel[(b * h, triton.cdiv(t_q, config.block_m))](
        q, k, v, out, dout, dq, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(dout), *_strides(dq),
        h, t_q, k.shape[2], scale,
        **_constexprs(q, causal, config),
    )  # fmt: skip
    return dq, delta


def launch_backward_dkdv(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    causal: bool,
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dk/dv kernel: ``(dk, dv)``; needs the ``delta`` written by :func:`launch_backward_dq`."""
    b, h, t_q, _ = q.shape
    t_k = k.shape[2]
    dk, dv = torch.empty_like(k), torch.empty_like(v)  # (b, h, t_k, d) each
    flash_bwd_dkdv_kernel[(b * h, triton.cdiv(t_k, config.block_n))](
        q, k, v, dout, dk, dv, lse, delta,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        h, t_q, t_k, scale,
        **_constexprs(q, causal, config),
    )  # fmt: skip
    return dk, dv
