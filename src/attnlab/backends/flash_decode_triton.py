"""``flash_decode_triton``: split-KV decoding ("flash-decoding") as Triton kernels, forward only.

The algorithm of :mod:`attnlab.backends.flash_decode_torch` (its module docstring explains it), compiled: the
split kernel runs one program per (key/value head, chunk of keys, block of packed query rows), the reduce
kernel one per packed row (kernels in :mod:`attnlab.kernels.flash_decode`). The same plan decides which keys
each split reads (:func:`~attnlab.backends.flash_decode_torch.split_plan`, chunks of whole key blocks), the
same heuristic how many splits (:func:`~attnlab.backends.flash_decode_torch.default_num_splits`, overridden
by ``num_splits=``). GQA/MQA, sliding windows, per-row key lengths ``kv_lens`` (``cache_seqlens``: each program
loads its row's length; splits past it run no step), softcap, ALiBi, sinks and the returned lse; at most
:data:`~attnlab.backends.flash_decode_torch.MAX_QUERIES` queries; float16, bfloat16 and float32 (true float32
products); head dims up to 256. Inputs that require grad (with grad enabled) are refused: no backward.

On CUDA tensors the kernels are compiled; on CPU tensors they run in Triton's interpreter, which needs
``TRITON_INTERPRET=1`` in the environment before Triton is first imported (see :mod:`.flash_triton`).
"""

from __future__ import annotations

import torch

from .flash_decode_torch import check_forward_only, check_num_queries, default_num_splits, keys_to_split, split_plan
from .flash_triton import check_kernel_inputs
from .spec import AttentionSpec

__all__ = ["FEATURES", "flash_decode_triton_attention", "key_block"]

#: The optional features of :class:`AttentionSpec` these kernels do (as flash_decode_torch).
FEATURES: frozenset[str] = frozenset({"gqa", "window", "softcap", "sinks", "alibi_slopes", "kv_lens", "return_lse"})
#: Packed query rows per program at most (more rows: more row blocks in the grid).
MAX_BLOCK_M = 64


def key_block(device_type: str) -> int:
    """Keys per tile of the split kernel: 64 on CUDA, 16 in the interpreter (where tests are small)."""
    return 64 if device_type == "cuda" else 16


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def flash_decode_triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, *, num_splits: int | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Split-KV attention kernels on q (b, h, t_q <= 16, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d) [, lse].

    The registry's function (inputs checked by ``Backend.attend``); ``num_splits``: key chunks per key/value
    head (default: :func:`~attnlab.backends.flash_decode_torch.default_num_splits`). lse is float32.
    """
    check_num_queries("flash_decode_triton", q.shape[2])
    check_forward_only("flash_decode_triton", q, k, v, spec)
    check_kernel_inputs(q, "flash_decode_triton")
    b, h, t_q, head_dim = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    group = h // h_kv
    rows = group * t_q  # packed rows per key/value head
    heads = b * h_kv
    block_n = key_block(q.device.type)
    if num_splits is None:
        num_splits = default_num_splits(keys_to_split(t_q, t_k, spec), heads, q.device)
    plan = split_plan(t_q, t_k, spec, num_splits, block_n)
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)  # (b, h, t_q, d)
    lse = torch.full((b, h, t_q), float("-inf"), dtype=torch.float32, device=q.device)  # (b, h, t_q)
    if plan.num_splits == 0 or heads * rows == 0:  # nobody sees a key (or nothing to compute)
        return (out, lse) if spec.return_lse else out

    import triton

    from ..kernels.flash_decode import flash_decode_reduce_kernel, flash_decode_split_kernel
    from ..kernels.interpreter_compat import apply_interpreter_fix

    apply_interpreter_fix()
    splits = plan.num_splits
    partial_out = torch.empty(heads, splits, rows, head_dim, dtype=torch.float32, device=q.device)  # (B, S, R, d)
    partial_lse = torch.empty(heads, splits, rows, dtype=torch.float32, device=q.device)  # (B, S, R)
    block_m = min(max(16, triton.next_power_of_2(rows)), MAX_BLOCK_M)  # tl.dot needs 16 rows at least
    block_d = max(16, triton.next_power_of_2(head_dim))
    sinks = None if spec.sinks is None else spec.sinks.detach()
    slopes = None if spec.alibi_slopes is None else spec.alibi_slopes.detach()
    kv_lens = None if spec.kv_lens is None else spec.kv_lens.to(torch.int32).contiguous()  # (b,)
    flash_decode_split_kernel[(heads, splits, triton.cdiv(rows, block_m))](
        q, k, v, partial_out, partial_lse, slopes, kv_lens,
        *_strides(q), *_strides(k), *_strides(v),
        h_kv, t_q, t_k, rows, splits, plan.start, plan.start + plan.n_keys, plan.chunk,
        spec.scale_for(head_dim), 1.0 if spec.softcap is None else float(spec.softcap),
        0 if spec.window is None else spec.window,
        CAUSAL=spec.causal, WINDOW=spec.window is not None, KV_LENS=kv_lens is not None,
        SOFTCAP=spec.softcap is not None, ALIBI=slopes is not None, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if q.device.type == "cuda" else 1, num_stages=2 if q.device.type == "cuda" else 1,
    )  # fmt: skip
    flash_decode_reduce_kernel[(heads * rows,)](
        partial_out, partial_lse, out, lse, sinks,
        *_strides(out),
        h_kv, t_q, rows, splits,
        SINKS=sinks is not None, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_S=max(2, triton.next_power_of_2(splits)),
        num_warps=1,
    )  # fmt: skip
    return (out, lse) if spec.return_lse else out
