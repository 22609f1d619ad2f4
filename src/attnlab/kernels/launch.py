"""Launching the FlashAttention kernels: grids, strides, dtypes, feature flags and block configurations.

Inputs may have any strides (a (b, t, h, d) buffer viewed as (b, h, t, d) needs no copy); outputs are
allocated here. k and v may have fewer heads than q (GQA/MQA): the kernels index the shared head, nothing is
repeated. Each optional feature of :class:`.features.KernelFeatures` is one compile-time flag, and its
tensors are passed only when it is on (``None`` otherwise). Importing this module imports Triton (and, in
interpreter mode, applies :mod:`.interpreter_compat`).
"""

from __future__ import annotations

import torch
import triton

from .config import KernelConfig
from .features import KernelFeatures
from .flash_bwd import flash_bwd_dkdv_kernel, flash_bwd_dq_kernel
from .flash_fwd import flash_fwd_kernel
from .interpreter_compat import apply_interpreter_fix

__all__ = ["launch_backward", "launch_backward_dkdv", "launch_backward_dq", "launch_forward", "needs_int64_rows"]

apply_interpreter_fix()  # only under TRITON_INTERPRET=1 with NumPy >= 2.4 and Triton <= 3.6


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs get true float32 products ("ieee"); the default "tf32" would cost ~1e-3 of accuracy.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs at least 16 along the reduction


#: Offsets at or past this many elements overflow int32.
INT32_LIMIT = 2**31


def needs_int64_rows(*tensors: torch.Tensor) -> bool:
    """Whether some (b, h, t, d) tensor's largest offset inside one head reaches 2**31 elements.

    The kernels take batch and head offsets in int64 always; row offsets ``row * stride_t`` only when this says
    so (then a compile-time flag switches them to int64), as int64 offsets cost registers in the hot loops.
    """
    return any((t.shape[2] - 1) * t.stride(2) + (t.shape[3] - 1) * t.stride(3) >= INT32_LIMIT for t in tensors)


def _constexprs(
    q: torch.Tensor, k: torch.Tensor, features: KernelFeatures, config: KernelConfig, *tensors: torch.Tensor
) -> dict:
    """The compile-time arguments every kernel takes: features, GQA group, offsets, head dim, blocks, launch shape.

    ``tensors``: every (b, h, t, d) tensor the kernel indexes, for :func:`needs_int64_rows`.
    """
    head_dim = q.shape[-1]
    return dict(
        INT64_ROWS=needs_int64_rows(*tensors),
        CAUSAL=features.causal,
        WINDOW=features.window is not None,
        PACKED=features.packed,
        KV_LENS=features.kv_lens is not None,
        SOFTCAP=features.softcap is not None,
        ALIBI=features.alibi_slopes is not None,
        GROUP=q.shape[1] // k.shape[1],  # query heads per key/value head
        HEAD_DIM=head_dim,
        BLOCK_D=_block_d(head_dim),
        DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def _scalars(features: KernelFeatures) -> tuple[float, int]:
    """``(softcap, window)`` as the kernels take them (ignored by kernels compiled without the feature)."""
    return (1.0 if features.softcap is None else features.softcap), (0 if features.window is None else features.window)


def launch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, features: KernelFeatures, scale: float, config: KernelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: ``(out, lse)``, out (b, h, t_q, d) in q's dtype, lse (b, h, t_q) float32.

    ``lse`` covers the keys only (not a sink) and is ``+inf`` for rows that see no key.
    """
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[2]
    out = torch.empty(b, h, t_q, head_dim, dtype=q.dtype, device=q.device)  # (b, h, t_q, d)
    lse = torch.empty(b, h, t_q, dtype=torch.float32, device=q.device)  # (b, h, t_q)
    flash_fwd_kernel[(b * h, triton.cdiv(t_q, config.block_m))](
        q, k, v, out, lse, features.sinks, features.alibi_slopes, features.seq_start, features.seq_end,
        features.kv_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        h, t_q, t_k, scale, *_scalars(features),
        SINKS=features.sinks is not None,
        **_constexprs(q, k, features, config, q, k, v, out),
    )  # fmt: skip
    return out, lse


def launch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    features: KernelFeatures,
    scale: float,
    dq_config: KernelConfig,
    dkdv_config: KernelConfig,
    delta_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the dq pass (which also writes ``delta``), then the dkdv pass that reads it: ``(dq, dk, dv, delta)``.

    ``lse`` (b, h, t_q) float32 is the softmax's normaliser (the sink folded in), ``+inf`` where a row sees
    no key; ``delta_shift`` (b, h, t_q), optional, is subtracted from ``delta`` (a gradient on the returned lse).
    """
    dq, delta = launch_backward_dq(dout, q, k, v, out, lse, features, scale, dq_config, delta_shift)
    dk, dv = launch_backward_dkdv(dout, q, k, v, lse, delta, features, scale, dkdv_config)
    return dq, dk, dv, delta


def launch_backward_dq(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    features: KernelFeatures,
    scale: float,
    config: KernelConfig,
    delta_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dq pass: ``(dq, delta)`` with delta (b, h, t_q) = rowsum(dO * O) - delta_shift in float32."""
    b, h, t_q, _ = q.shape
    dq = torch.empty_like(q)  # (b, h, t_q, d)
    delta = torch.empty(b, h, t_q, dtype=torch.float32, device=q.device)  # (b, h, t_q)
    flash_bwd_dq_kernel[(b * h, triton.cdiv(t_q, config.block_m))](
        q, k, v, out, dout, dq, lse, delta, delta_shift, features.alibi_slopes, features.seq_start, features.seq_end,
        features.kv_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(dout), *_strides(dq),
        h, t_q, k.shape[2], scale, *_scalars(features),
        LSE_GRAD=delta_shift is not None,
        **_constexprs(q, k, features, config, q, k, v, out, dout, dq),
    )  # fmt: skip
    return dq, delta


def launch_backward_dkdv(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    features: KernelFeatures,
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dkdv pass: ``(dk, dv)`` (b, h_kv, t_k, d); needs the ``delta`` written by :func:`launch_backward_dq`."""
    b, h_kv, t_k, _ = k.shape
    t_q = q.shape[2]
    # (b, h_kv, t_k, d) each; with kv_lens the kernel stores only each row's keys, the rest must read zero
    allocate = torch.empty_like if features.kv_lens is None else torch.zeros_like
    dk, dv = allocate(k), allocate(v)
    flash_bwd_dkdv_kernel[(b * h_kv, triton.cdiv(t_k, config.block_n))](
        q, k, v, dout, dk, dv, lse, delta, features.alibi_slopes, features.seq_start, features.seq_end,
        features.kv_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dk), *_strides(dv),
        h_kv, t_q, t_k, scale, *_scalars(features),
        **_constexprs(q, k, features, config, q, k, v, dout, dk, dv),
    )  # fmt: skip
    return dk, dv
