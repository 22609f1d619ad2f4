"""``flash_torch``: FlashAttention-2 in plain PyTorch, the readable specification of the Triton kernels.

The forward pass walks query blocks of ``block_m`` rows and, inside each, key/value blocks of
``block_n`` columns, keeping a running softmax per query row: the running max ``m_i``, the running sum
of exponentials ``l_i`` and the unnormalised output ``acc``. Nothing of size ``t_q x t_k`` is ever
stored; the forward keeps only the output and the log-sum-exp ``lse`` of each row. Causal key blocks
that lie wholly above the diagonal are skipped, and only blocks that cross it are masked.

The backward pass (FlashAttention-2's) recomputes each score tile from ``q``, ``k`` and ``lse``
instead of reading a stored attention matrix, so memory grows with ``t``, not ``t^2``.

Numerics mirror the kernels: scores, softmax and accumulators in float32 (float64 for float64
inputs); the probabilities are rounded to the input dtype only for the products with ``v`` and ``dO``.
Rows that see no key (causal, ``t_q > t_k``) output zeros and get ``lse = +inf``, which makes every
recomputed probability of theirs ``exp(-inf) = 0`` in the backward: zero, finite gradients.
"""

from __future__ import annotations

import torch

from .spec import AttentionSpec, check_qkv

__all__ = [
    "FEATURES",
    "check_block_size",
    "default_block_size",
    "flash_torch_attention",
    "flash_torch_backward",
    "flash_torch_forward",
]

#: The optional features of :class:`AttentionSpec` this backend does (the registry refuses the others).
FEATURES: frozenset[str] = frozenset()

#: Default query and key block size. On a CPU, 128 x 128 tiles batched over a group of heads keep the
#: matmuls large while a group's working set stays near L2; see docs/flash-notes.md for the measurements.
DEFAULT_BLOCK = 128
#: Elements in one group's score tile: 2**18 float32 values = 1 MiB.
TILE_ELEMENTS = 2**18


def check_block_size(name: str, value: int) -> None:
    """Raise ``ValueError`` unless a block size is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _CausalBias:
    """Additive 0 / -inf tiles for the blocks that cross the causal diagonal, built once per shape.

    Query row ``i0 + r`` may not see key ``j0 + c`` when ``c - r > i0 + offset - j0``, so a tile depends
    only on that shift and its size; a handful of distinct tiles serve every diagonal block. Adding the
    bias inside the score matmul (``baddbmm``) costs less than a separate ``masked_fill`` pass.
    """

    def __init__(self, offset: int, dtype: torch.dtype, device: torch.device) -> None:
        self.offset, self.dtype, self.device = offset, dtype, device
        self.tiles: dict[tuple[int, int, int], torch.Tensor] = {}

    def __call__(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        key = (i0 + self.offset - j0, i1 - i0, j1 - j0)
        if key not in self.tiles:
            rows = torch.arange(i0, i1, device=self.device)  # (bm,)
            cols = torch.arange(j0, j1, device=self.device)  # (bn,)
            future = cols[None, :] > rows[:, None] + self.offset  # (bm, bn)
            tile = torch.zeros(i1 - i0, j1 - j0, dtype=self.dtype, device=self.device)  # (bm, bn)
            self.tiles[key] = tile.masked_fill_(future, float("-inf"))
        return self.tiles[key]


def _round_like(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round probabilities to the input dtype (what the kernel feeds its P·V product), keep the accumulator dtype."""
    return p if dtype in (torch.float32, torch.float64) else p.to(dtype).to(p.dtype)


def default_block_size(num_heads: int) -> int:
    """The block size used when none is given: 128, or 256 when fewer than 16 (b*h) heads share a tile.

    With few heads a 128 x 128 tile is too small a matmul and Python's per-tile cost dominates.
    """
    return DEFAULT_BLOCK if num_heads >= 16 else 2 * DEFAULT_BLOCK


def _head_groups(num_heads: int, block_m: int, block_n: int) -> list[slice]:
    """Split the b*h heads into groups whose (group, block_m, block_n) score tile fits a CPU's L2 cache.

    All heads of a group go through each tile's matmuls together (one batched call instead of one per
    head); capping the tile at 2**18 elements (1 MiB in float32, 2 MiB in float64) keeps the elementwise
    softmax passes in cache.
    """
    group = max(1, TILE_ELEMENTS // (block_m * block_n))
    return [slice(start, min(start + group, num_heads)) for start in range(0, num_heads, group)]


def flash_torch_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    block_m: int = DEFAULT_BLOCK,
    block_n: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled forward: ``(out, lse)`` with out (b, h, t_q, d) in q's dtype and lse (b, h, t_q) in float32/64."""
    check_qkv(q, k, v)
    check_block_size("block_m", block_m)
    check_block_size("block_n", block_n)
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[-2]
    acc_dtype = _accumulator_dtype(q.dtype)
    # The softmax scale is folded into q once, instead of into every score tile.
    q_all = q.reshape(b * h, t_q, head_dim).to(acc_dtype) * AttentionSpec(scale=scale).scale_for(
        head_dim
    )  # (bh, t_q, d)
    k_all = k.reshape(b * h, t_k, head_dim).to(acc_dtype)  # (bh, t_k, d)
    v_all = v.reshape(b * h, t_k, head_dim).to(acc_dtype)  # (bh, t_k, d)
    out = torch.empty(b * h, t_q, head_dim, dtype=q.dtype, device=q.device)  # (bh, t_q, d)
    lse = torch.empty(b * h, t_q, dtype=acc_dtype, device=q.device)  # (bh, t_q)
    for heads in _head_groups(b * h, block_m, block_n):
        _forward_heads(
            q_all[heads], k_all[heads], v_all[heads], out[heads], lse[heads], causal, q.dtype, block_m, block_n
        )
    return out.view(b, h, t_q, head_dim), lse.view(b, h, t_q)


def _forward_heads(
    q_all: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    in_dtype: torch.dtype,
    block_m: int,
    block_n: int,
) -> None:
    """The forward for one group of heads: q_all (g, t_q, d) pre-scaled; fills out (g, t_q, d) and lse (g, t_q)."""
    g, t_q, head_dim = q_all.shape
    t_k = k_all.shape[1]
    offset = t_k - t_q  # query i sees keys j <= i + offset
    causal_bias = _CausalBias(offset, q_all.dtype, q_all.device)
    for i0 in range(0, t_q, block_m):
        i1 = min(i0 + block_m, t_q)
        q_blk = q_all[:, i0:i1]  # (g, bm, d)
        m_i = torch.full((g, i1 - i0), float("-inf"), dtype=q_all.dtype, device=q_all.device)  # (g, bm)
        l_i = torch.zeros(g, i1 - i0, dtype=q_all.dtype, device=q_all.device)  # (g, bm)
        acc = torch.zeros(g, i1 - i0, head_dim, dtype=q_all.dtype, device=q_all.device)  # (g, bm, d)
        # Causal: the block's last row sees keys j < i1 + offset; later key blocks are skipped.
        k_end = max(0, min(t_k, i1 + offset)) if causal else t_k
        for j0 in range(0, k_end, block_n):
            j1 = min(j0 + block_n, k_end)
            k_t = k_all[:, j0:j1].transpose(1, 2)  # (g, d, bn)
            crosses_diagonal = causal and j1 - 1 > i0 + offset
            if crosses_diagonal:  # future keys get -inf from the bias
                attn_scores = torch.baddbmm(causal_bias(i0, i1, j0, j1), q_blk, k_t)  # (g, bm, bn)
            else:
                attn_scores = torch.bmm(q_blk, k_t)  # (g, bm, bn)
            m_new = torch.maximum(m_i, attn_scores.amax(dim=-1))  # (g, bm)
            # A row with every key masked so far has m = -inf; subtracting 0 instead keeps exp(-inf) = 0
            # rather than exp(-inf - -inf) = NaN.
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0) if crosses_diagonal else m_new
            probs = attn_scores.sub_(m_safe.unsqueeze(-1)).exp_()  # (g, bm, bn), in place
            alpha = torch.exp(m_i - m_safe)  # (g, bm) rescales what was summed under the old max
            l_i = l_i.mul_(alpha).add_(probs.sum(dim=-1))
            acc.mul_(alpha.unsqueeze(-1)).baddbmm_(_round_like(probs, in_dtype), v_all[:, j0:j1])  # (g, bm, d)
            m_i = m_new
        has_key = l_i > 0  # (g, bm); False only for rows that see no key
        out[:, i0:i1] = acc / torch.where(has_key, l_i, 1.0).unsqueeze(-1)  # (g, bm, d); zeros if no key
        lse[:, i0:i1] = torch.where(has_key, m_i + torch.log(l_i), float("inf"))  # (g, bm)


def flash_torch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    block_m: int = DEFAULT_BLOCK,
    block_n: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: ``(dq, dk, dv)``, recomputing each probability tile from ``lse``.

    With ``P = softmax(S)`` and ``delta_i = sum_j P_ij dP_ij = dO_i · O_i``, the score gradient is
    ``dS = P * (dP - delta)``; see :func:`_backward_heads` for the loops.
    """
    b, h, t_q, head_dim = q.shape
    t_k = k.shape[-2]
    acc_dtype = lse.dtype
    softmax_scale = AttentionSpec(scale=scale).scale_for(head_dim)
    q_all = q.reshape(b * h, t_q, head_dim).to(acc_dtype) * softmax_scale  # (bh, t_q, d), pre-scaled
    k_all = k.reshape(b * h, t_k, head_dim).to(acc_dtype)  # (bh, t_k, d)
    v_all = v.reshape(b * h, t_k, head_dim).to(acc_dtype)  # (bh, t_k, d)
    do_all = dout.reshape(b * h, t_q, head_dim).to(acc_dtype)  # (bh, t_q, d)
    delta = (do_all * out.reshape(b * h, t_q, head_dim).to(acc_dtype)).sum(dim=-1)  # (bh, t_q)
    dq = torch.zeros_like(q_all)  # (bh, t_q, d)
    dk = torch.empty_like(k_all)  # (bh, t_k, d)
    dv = torch.empty_like(v_all)  # (bh, t_k, d)
    lse_all = lse.reshape(b * h, t_q)  # (bh, t_q)
    for heads in _head_groups(b * h, block_m, block_n):
        _backward_heads(
            q_all[heads], k_all[heads], v_all[heads], do_all[heads], lse_all[heads], delta[heads],
            dq[heads], dk[heads], dv[heads], causal, q.dtype, block_m, block_n,
        )  # fmt: skip
    dq.mul_(softmax_scale)  # S = (scale q) k^T, so dq = scale dS k
    shape_q, shape_k = (b, h, t_q, head_dim), (b, h, t_k, head_dim)
    return dq.view(shape_q).to(q.dtype), dk.view(shape_k).to(k.dtype), dv.view(shape_k).to(v.dtype)


def _backward_heads(
    q_all: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    do_all: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    causal: bool,
    in_dtype: torch.dtype,
    block_m: int,
    block_n: int,
) -> None:
    """The backward for one group of heads, FlashAttention-2's loop order.

    Outer loop over key blocks (each owns its ``dk``, ``dv`` accumulators), inner loop over the query
    blocks that see it; ``dq`` (g, t_q, d) is accumulated in place across key blocks.
    """
    t_q, t_k = q_all.shape[1], k_all.shape[1]
    offset = t_k - t_q
    causal_bias = _CausalBias(offset, q_all.dtype, q_all.device)
    for j0 in range(0, t_k, block_n):
        j1 = min(j0 + block_n, t_k)
        k_blk, v_blk = k_all[:, j0:j1], v_all[:, j0:j1]  # (g, bn, d) each
        dk_blk = torch.zeros_like(k_blk)  # (g, bn, d)
        dv_blk = torch.zeros_like(v_blk)  # (g, bn, d)
        # Causal: the first query row that sees key j0 is j0 - offset; earlier rows are skipped.
        i_start = max(0, j0 - offset) if causal else 0
        for i0 in range(i_start, t_q, block_m):
            i1 = min(i0 + block_m, t_q)
            if causal and j1 - 1 > i0 + offset:
                attn_scores = torch.baddbmm(causal_bias(i0, i1, j0, j1), q_all[:, i0:i1], k_blk.transpose(1, 2))
            else:
                attn_scores = torch.bmm(q_all[:, i0:i1], k_blk.transpose(1, 2))  # (g, bm, bn)
            # lse = +inf on rows that see no key makes their probabilities exp(-inf) = 0.
            probs = attn_scores.sub_(lse[:, i0:i1].unsqueeze(-1)).exp_()  # (g, bm, bn), in place
            do_blk = do_all[:, i0:i1]  # (g, bm, d)
            dv_blk.baddbmm_(_round_like(probs, in_dtype).transpose(1, 2), do_blk)  # (g, bn, d)
            dprobs = torch.bmm(do_blk, v_blk.transpose(1, 2))  # (g, bm, bn)
            dscores = probs.mul_(dprobs.sub_(delta[:, i0:i1].unsqueeze(-1)))  # (g, bm, bn), in place
            dscores = _round_like(dscores, in_dtype)  # the kernel's dS operand is in the input dtype too
            dq[:, i0:i1].baddbmm_(dscores, k_blk)  # (g, bm, d)
            dk_blk.baddbmm_(dscores.transpose(1, 2), q_all[:, i0:i1])  # (g, bn, d); q_all is pre-scaled
        dk[:, j0:j1] = dk_blk
        dv[:, j0:j1] = dv_blk


class _FlashAttentionTorch(torch.autograd.Function):
    """Ties the tiled forward to the hand-written backward; saves only q, k, v, out and lse."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):
        out, lse = flash_torch_forward(q, k, v, causal=causal, scale=scale, block_m=block_m, block_n=block_n)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (causal, scale, block_m, block_n)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, block_m, block_n = ctx.config
        dq, dk, dv = flash_torch_backward(
            dout, q, k, v, out, lse, causal=causal, scale=scale, block_m=block_m, block_n=block_n
        )
        return dq, dk, dv, None, None, None, None


def flash_torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """FlashAttention in PyTorch on q (b, h, t_q, d), k/v (b, h, t_k, d) -> (b, h, t_q, d).

    ``block_m`` / ``block_n``: query / key rows per tile (default: :func:`default_block_size`).
    """
    block_m = default_block_size(q.shape[0] * q.shape[1]) if block_m is None else block_m
    block_n = default_block_size(q.shape[0] * q.shape[1]) if block_n is None else block_n
    check_block_size("block_m", block_m)
    check_block_size("block_n", block_n)
    return _FlashAttentionTorch.apply(q, k, v, spec.causal, spec.scale, block_m, block_n)
