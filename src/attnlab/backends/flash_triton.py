"""``flash_triton``: FlashAttention-2 as Triton kernels, forward and backward.

The same algorithm and names as :mod:`attnlab.backends.flash_torch`, compiled for the GPU (kernels in
:mod:`attnlab.kernels`). Any sequence lengths (ragged last tiles are masked), ``t_q != t_k`` with the
bottom-right causal convention, head dims up to 256 (powers of two run unpadded), float16, bfloat16
and float32 (float32 with true float32 products, not tf32).

Every option of :class:`AttentionSpec` but dropout, forward and backward, in any combination: GQA/MQA
(a key/value head serves its query group, nothing repeated), sliding windows and packed sequences (the
kernels visit only the key tiles a query block can see, so work grows as ``t * window`` and ``sum t_i^2``),
per-row key lengths ``kv_lens`` (each program loads its row's length, which then plays ``t_k``'s part),
softcap, ALiBi, sinks (with their gradient) and the returned lse (with its gradient). Each is a
compile-time flag of the kernels (:class:`attnlab.kernels.features.KernelFeatures`): a call without it
runs a kernel compiled without it. ALiBi slopes are constants here: slopes that require grad are refused.

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
from ..kernels.features import KernelFeatures
from .spec import AttentionSpec

__all__ = [
    "FEATURES",
    "FlashTritonConfig",
    "check_kernel_inputs",
    "flash_triton_attention",
    "interpreter_requested",
    "unsupported_device_reason",
]

#: The optional features of :class:`AttentionSpec` these kernels do (the registry refuses the others: dropout).
FEATURES: frozenset[str] = frozenset(
    {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse"}
)
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


def check_kernel_inputs(q: torch.Tensor, backend: str = "flash_triton") -> None:
    """The Triton kernels' own limits (dtype, head dim, device, Triton itself), after the checks every backend
    makes (AttentionSpec.check); ``backend`` names the caller in the errors (the decoding kernels share them)."""
    if importlib.util.find_spec("triton") is None:
        raise ModuleNotFoundError(f"{backend} needs the triton package: pip install 'attnlab[triton]'")
    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise ValueError(f"{backend} supports {names}; got {q.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[-1]} exceeds {backend}'s maximum of {MAX_HEAD_DIM}")
    if (reason := unsupported_device_reason(q.device.type)) is not None:
        raise ValueError(f"{backend} {reason}; got tensors on {q.device}")
    if q.device.type == "cpu":
        _check_interpreter_active()


def _check_alibi_slopes(spec: AttentionSpec) -> None:
    """The kernels treat ALiBi slopes as constants: refuse slopes that ask for a gradient."""
    slopes = spec.alibi_slopes
    if slopes is not None and slopes.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "flash_triton computes no gradient for alibi_slopes (fixed per-head constants); pass slopes that do "
            "not require grad, e.g. alibi_slopes.detach()"
        )


def _softmax_lse(lse: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """The softmax's whole normaliser (b, h, t_q): the keys' ``lse`` with the sink's logit added in.

    Rows without keys keep ``+inf``, so every probability the backward recomputes for them is 0.
    """
    if sinks is None:
        return lse
    return torch.logaddexp(lse, sinks.to(torch.float32).view(1, -1, 1))  # (b, h, t_q)


class _FlashAttentionTriton(torch.autograd.Function):
    """Forward and backward kernels; saves q, k, v, out and the float32 log-sum-exp of the keys.

    Inputs: q, k, v, sinks (None or (h,), the one input besides q, k, v with a gradient), the kernels'
    :class:`KernelFeatures`, the scale, the block configuration and whether to return the lse as well.
    """

    @staticmethod
    def forward(ctx, q, k, v, sinks, features, scale, config, return_lse):
        b, h, t_q, head_dim = q.shape
        if b * h * t_q == 0 or k.shape[2] == 0:
            # Nothing to launch. With no keys every row sees no key: zeros, lse = +inf (see flash_torch).
            out = q.new_zeros(b, h, t_q, head_dim)  # (b, h, t_q, d)
            lse = torch.full((b, h, t_q), float("inf"), dtype=torch.float32, device=q.device)  # (b, h, t_q)
        else:
            from ..kernels.launch import launch_forward

            out, lse = launch_forward(q, k, v, features, scale, config.fwd)
        ctx.save_for_backward(q, k, v, sinks, out, lse)
        ctx.features, ctx.scale, ctx.config = features, scale, config
        ctx.set_materialize_grads(False)  # an unused lse gets no gradient: None, not a tensor of zeros
        if not return_lse:
            return out
        # Returned lse: -inf, not the internal +inf, for rows that see no key (the spec's convention).
        return out, lse.masked_fill(lse == float("inf"), float("-inf"))

    @staticmethod
    def backward(ctx, dout, dlse=None):
        q, k, v, sinks, out, lse = ctx.saved_tensors
        dsinks = None
        if dout is None:
            dout = torch.zeros_like(out)  # (b, h, t_q, d): only the lse is used downstream
        if q.numel() == 0 or k.numel() == 0:
            dsinks = None if sinks is None else torch.zeros_like(sinks)
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), dsinks, None, None, None, None
        from ..kernels.launch import launch_backward

        softmax_lse = _softmax_lse(lse, sinks)  # (b, h, t_q)
        has_key = lse != float("inf")  # (b, h, t_q)
        delta_shift = None
        if dlse is not None:
            # d lse_i / d score_ij = exp(score_ij - lse_i) = probs_ij * exp(softmax_lse_i - lse_i): with probs
            # recomputed from softmax_lse, the lse's gradient joins dscores as probs * dlse * exp(...), i.e. as
            # a shift of delta (exp(...) = 1 without sinks).
            ratio = torch.exp(torch.where(has_key, softmax_lse - lse, 0.0))  # (b, h, t_q)
            delta_shift = torch.where(has_key, dlse.to(torch.float32) * ratio, 0.0)  # (b, h, t_q)
        dq, dk, dv, delta = launch_backward(
            dout, q, k, v, out, softmax_lse, ctx.features, ctx.scale, ctx.config.dq, ctx.config.dkdv, delta_shift
        )
        if sinks is not None and ctx.needs_input_grad[3]:
            # d loss / d sink_h = -sum_i P_sink_i * delta_i over the head's rows, P_sink_i = exp(sink - softmax_lse_i)
            # (0 for rows without keys); delta here is rowsum(dO * O) alone, without the lse's shift.
            p_sink = torch.exp(sinks.to(torch.float32).view(1, -1, 1) - softmax_lse)  # (b, h, t_q)
            rowsum = delta if delta_shift is None else delta + delta_shift  # (b, h, t_q)
            dsinks = -(p_sink * rowsum).sum(dim=(0, 2)).to(sinks.dtype)  # (h,)
        return dq, dk, dv, dsinks, None, None, None, None


def flash_triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    config: FlashTritonConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention in Triton on q (b, h, t_q, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse (b, h, t_q)].

    Every option of ``spec`` but dropout; ``config`` sets the kernels' block sizes, warps and pipeline stages
    (default: tuned per head dim). The returned lse (float32) has a gradient too.
    """
    check_kernel_inputs(q)
    _check_alibi_slopes(spec)
    if config is None:
        config = default_config(q.shape[-1], q.device.type, q.dtype)
    elif not isinstance(config, FlashTritonConfig):
        raise ValueError(f"config must be a FlashTritonConfig, got {type(config).__name__}")
    features = KernelFeatures.from_spec(spec, q.device)
    scale = spec.scale_for(q.shape[-1])
    return _FlashAttentionTriton.apply(q, k, v, spec.sinks, features, scale, config, spec.return_lse)
