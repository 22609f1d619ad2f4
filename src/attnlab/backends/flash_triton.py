"""``flash_triton``: FlashAttention-2 as Triton kernels, forward and backward.

The same algorithm and names as :mod:`attnlab.backends.flash_torch`, compiled for the GPU (kernels in
:mod:`attnlab.kernels`). Any sequence lengths (ragged last tiles are masked), ``t_q != t_k`` with the
bottom-right causal convention, head dims up to 256 (powers of two run unpadded), float16, bfloat16
and float32 (float32 with true float32 products, not tf32).

Triton is imported only when a kernel runs. On CUDA tensors the kernels are compiled; on CPU tensors
they run in Triton's interpreter, which must have been switched on with ``TRITON_INTERPRET=1`` in the
environment *before* Triton was first imported (Triton reads it when it defines its own library
functions). That mode exists for testing at small sizes; it is far too slow for real work.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..kernels.config import FlashTritonConfig, default_config
from .spec import AttentionSpec

__all__ = [
    "FEATURES",
    "FlashTritonConfig",
    "flash_triton_attention",
    "interpreter_requested",
    "unsupported_device_reason",
]

#: The optional features of :class:`AttentionSpec` these kernels do (the registry refuses the others).
FEATURES: frozenset[str] = frozenset()
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set, which lets the kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unsupported_device_reason(device_type: str) -> str | None:
    """Why the kernels cannot run on ``device_type`` in this process, or None when they can."""
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if interpreter_requested():
            return None
        return "runs on CUDA; on the CPU only in Triton's interpreter (set TRITON_INTERPRET=1 before starting)"
    return f"runs on CUDA (or the CPU under TRITON_INTERPRET=1), not {device_type}"


def _check_interpreter_active() -> None:
    """Raise unless Triton itself was imported in interpreter mode (the variable alone is not enough)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.zeros, InterpretedFunction):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after Triton had been imported, so Triton's own functions are "
            "compiled, not interpreted; set it in the environment before the process imports triton"
        )


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """flash_triton's own limits, after the checks every backend makes (AttentionSpec.check)."""
    if importlib.util.find_spec("triton") is None:
        raise ModuleNotFoundError("flash_triton needs the triton package: pip install 'attnlab[triton]'")
    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise ValueError(f"flash_triton supports {names}; got {q.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[-1]} exceeds flash_triton's maximum of {MAX_HEAD_DIM}")
    if (reason := unsupported_device_reason(q.device.type)) is not None:
        raise ValueError(f"flash_triton {reason}; got tensors on {q.device}")
    if q.device.type == "cpu":
        _check_interpreter_active()


class _FlashAttentionTriton(torch.autograd.Function):
    """Forward and backward kernels; saves q, k, v, out and the float32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, config):
        b, h, t_q, head_dim = q.shape
        if b * h * t_q == 0 or k.shape[2] == 0:
            # Nothing to launch. With no keys every row sees no key: zeros, lse = +inf (see flash_torch).
            out = q.new_zeros(b, h, t_q, head_dim)  # (b, h, t_q, d)
            lse = torch.full((b, h, t_q), float("inf"), dtype=torch.float32, device=q.device)  # (b, h, t_q)
        else:
            from ..kernels.launch import launch_forward

            out, lse = launch_forward(q, k, v, causal, scale, config.fwd)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.config = causal, scale, config
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        if q.numel() == 0 or k.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None
        from ..kernels.launch import launch_backward

        dq, dk, dv = launch_backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale, ctx.config.dq, ctx.config.dkdv)
        return dq, dk, dv, None, None, None


def flash_triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    config: FlashTritonConfig | None = None,
) -> torch.Tensor:
    """FlashAttention in Triton on q (b, h, t_q, d), k/v (b, h, t_k, d) -> (b, h, t_q, d).

    ``config`` sets the kernels' block sizes, warps and pipeline stages (default: tuned per head dim).
    """
    _check_inputs(q, k, v)
    if config is None:
        config = default_config(q.shape[-1], q.device.type, q.dtype)
    elif not isinstance(config, FlashTritonConfig):
        raise ValueError(f"config must be a FlashTritonConfig, got {type(config).__name__}")
    return _FlashAttentionTriton.apply(q, k, v, spec.causal, spec.scale_for(q.shape[-1]), config)
