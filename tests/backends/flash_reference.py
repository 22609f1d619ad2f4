"""Shared checks for the FlashAttention tests: inputs, the float64 reference and FlashAttention's error rule.

Not a test module (no ``test_`` prefix); the flash test files import it from this folder, which pytest
puts on ``sys.path`` (rootdir-based "prepend" import mode, no ``__init__.py`` here).

The rule (FlashAttention's): against the independent float64 reference (``reference_core_attention`` of
:mod:`attnlab.reference`: loops over rows, no masks), a backend's error is at most 2x the error of the
``naive`` backend computed in the same dtype for the output, and at most 3x for the gradients (dq, dk,
dv and the sinks'), plus a floor for cases where naive happens to be exact (8 float32 ulps of the
largest reference quantity of the call). The naive backend's own error measures what the dtype allows
for this input on this CPU, so the bound adapts to the dtype, the CPU's matmul kernels and the size of
the quantity (a dk summed over 800 queries is larger, and errs more, than an output row); a wrong mask or
scale errs by 1e-1 of the magnitude.

Options (``causal``, ``window``, ``softcap``, ``sinks``, ``alibi_slopes``, ``seq_lens``, ``kv_lens``,
``return_lse``) are passed through as the backend keywords (``kv_lens``, an integer tensor, reaches the
reference as it is); ``sinks`` gets its gradient compared too. With ``return_lse=True``
the returned lse is compared under the same rule (2x, its ``-inf`` rows exactly) and a gradient flows through
it as well (``dlse = dout[..., 0]`` on the rows that see a key), so dq, dk, dv include lse's share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnlab.backends import BACKENDS
from attnlab.reference import reference_core_attention

__all__ = [
    "FLOOR",
    "assert_kv_lens_padding_is_ignored",
    "assert_matches_reference",
    "assert_rows_without_keys_are_zero",
    "make_inputs",
    "max_error",
    "reference_attention",
    "reference_with_grads",
    "rows_without_keys",
    "run_with_grads",
]

Fn = Callable[..., torch.Tensor]

#: 8 float32 ulps of the reference's magnitude: below any real bug, above float32 rounding of a few ops.
FLOOR = 8 * torch.finfo(torch.float32).eps
# HALF_DSINKS: with half-precision inputs, the flash backends compute dsinks = -sum_i P_sink_i * delta_i from
# delta_i = dO_i . O_i with O as stored, rounded to the input dtype (as FlashAttention's kernels do), so dsinks
# carries about one input-dtype ulp of its own magnitude (measured: 0.3 to 1.1 ulp of bf16 / fp16 over seeds).
# naive computes in float32 and never rounds O before differentiating, so its dsinks error can be 1000x
# smaller; dsinks therefore gets a floor of 2 input-dtype ulps of its magnitude. A wrong sinks gradient errs
# by tens of ulps (a missing P_sink factor or sign, by the whole magnitude).
naive_attention = BACKENDS["naive"]


def make_inputs(
    b: int,
    h: int,
    t_q: int,
    t_k: int,
    head_dim: int,
    *,
    h_kv: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    scale: float = 1.0,
    seed: int = 0,
    contiguous: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (b, h, t_q, d), k, v (b, h_kv, t_k, d) and an output gradient, times ``scale``.

    ``contiguous=False`` returns (b, t, h, d) buffers viewed as (b, h, t, d) and a dout with a stride of
    2 along the head dim, as a fused projection or a sliced gradient would hand them over.
    """
    gen = torch.Generator().manual_seed(seed)
    h_kv = h if h_kv is None else h_kv

    def rand(heads: int, t: int, width: int = head_dim) -> torch.Tensor:
        if contiguous:
            x = torch.randn(b, heads, t, width, generator=gen)  # (b, heads, t, d)
        else:
            x = torch.randn(b, t, heads, width, generator=gen).transpose(1, 2)  # (b, heads, t, d), strided
        return (x * scale).to(device=device, dtype=dtype)

    q, k, v = rand(h, t_q), rand(h_kv, t_k), rand(h_kv, t_k)
    dout = rand(h, t_q, 2 * head_dim)[..., ::2] if not contiguous else rand(h, t_q)  # (b, h, t_q, d)
    return q, k, v, dout


def run_with_grads(
    fn: Fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, causal: bool = True, **options
) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv[, dsinks][, lse]) of ``fn`` at these inputs; leaves the inputs untouched.

    With ``return_lse=True`` the loss also holds ``sum(dout[..., 0] * lse)`` over the rows that see a key.
    """
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    leaves = [q, k, v]
    if options.get("sinks") is not None:
        options["sinks"] = options["sinks"].detach().requires_grad_()
        leaves.append(options["sinks"])
    result = fn(q, k, v, causal=causal, **options)
    out, lse = result if options.get("return_lse") else (result, None)
    outputs, grad_outputs = [out], [dout]
    if lse is not None:  # rows without keys have lse = -inf and no gradient to give
        outputs.append(torch.where(torch.isinf(lse), 0.0, lse))  # (b, h, t_q)
        grad_outputs.append(dout[..., 0].to(lse.dtype))  # (b, h, t_q)
    grads = torch.autograd.grad(outputs, leaves, grad_outputs) if out.numel() else tuple(t * 0 for t in leaves)
    return (out.detach(), *grads) + (() if lse is None else (lse.detach(),))


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, return_lse: bool = False, **options
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle called like a backend: out, or (out, lse) with ``return_lse``."""
    out, lse = reference_core_attention(q, k, v, causal=causal, **options)
    return (out, lse) if return_lse else out


def reference_with_grads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, causal: bool = True, **options
) -> tuple[torch.Tensor, ...]:
    """:func:`run_with_grads` of the float64 oracle on float64 copies (CPU) of everything."""
    as64 = [t.detach().double().cpu() for t in (q, k, v, dout)]
    return run_with_grads(reference_attention, *as64, causal, **_as64(options))


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64 on the CPU."""
    if expected.numel() == 0:
        return 0.0
    return (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item()


def _as64(options: dict) -> dict:
    """The options with their tensors (sinks, slopes) in float64 on the CPU, for the reference."""
    return {
        name: value.detach().double().cpu() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for name, value in options.items()
    }


def assert_matches_reference(
    fn: Fn,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    *,
    causal: bool = True,
    grads: bool = True,
    **options,
) -> None:
    """Assert FlashAttention's rule for ``fn`` on these inputs (and finiteness); see the module docstring."""
    if grads:
        reference = reference_with_grads(q, k, v, dout, causal, **options)
        naive = run_with_grads(naive_attention, q, k, v, dout, causal, **options)
        actual = run_with_grads(fn, q, k, v, dout, causal, **options)
    else:
        with torch.no_grad():
            as64 = [t.detach().double().cpu() for t in (q, k, v)]
            reference = _as_tuple(reference_attention(*as64, causal=causal, **_as64(options)))
            naive = _as_tuple(naive_attention(q, k, v, causal=causal, **options))
            actual = _as_tuple(fn(q, k, v, causal=causal, **options))
    assert actual[0].shape == reference[0].shape and actual[0].dtype == q.dtype
    names = [
        "out",
        *(["dq", "dk", "dv"] if grads else []),
        *(["dsinks"] if grads and options.get("sinks") is not None else []),
    ]
    if options.get("return_lse"):
        names.append("lse")
        lse, ref_lse = actual[-1], reference[-1]
        assert lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32), lse.dtype
        # Rows that see no key: -inf in both, exactly; the rule applies to the finite rows.
        assert torch.equal(torch.isneginf(lse).cpu(), torch.isneginf(ref_lse)), "lse's -inf rows differ"
        actual, reference, naive = ((*x[:-1], _finite(x[-1])) for x in (actual, reference, naive))
    assert len(names) == len(actual) == len(reference) == len(naive)
    # One magnitude for the whole call: a gradient that is exactly zero in float64 (one visible key makes
    # dq vanish) is still computed from terms of this size, whose float32 rounding does not cancel.
    # lse (a log, often larger than the rest) gets a floor from its own magnitude.
    magnitudes = [ref.abs().max().item() if ref.numel() else 0.0 for ref in reference]
    magnitude = max((m for name, m in zip(names, magnitudes, strict=True) if name != "lse"), default=0.0)
    for name, got, ref, base, own in zip(names, actual, reference, naive, magnitudes, strict=True):
        factor = 2.0 if name in ("out", "lse") else 3.0  # FlashAttention's rule: 2x for outputs, 3x for gradients
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        err, naive_err = max_error(got, ref), max_error(base, ref)
        floor = FLOOR * (own if name == "lse" else magnitude)
        if name == "dsinks" and q.dtype in (torch.float16, torch.bfloat16):
            floor += 2 * torch.finfo(q.dtype).eps * own  # see HALF_DSINKS below
        limit = factor * naive_err + floor
        assert err <= limit, f"{name}: error {err:.3g} > {factor} x naive's {naive_err:.3g} + floor {floor:.2g}"


def _as_tuple(result: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """lse with its -inf rows (no visible key, checked separately) set to zero, for error measurement."""
    return torch.where(torch.isneginf(lse), 0.0, lse)


def assert_rows_without_keys_are_zero(
    fn: Fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, **options
) -> None:
    """Causal, t_q > t_k: the first t_q - t_k queries see no key; their output and dq are exactly zero (lse
    exactly -inf with ``return_lse=True``), every gradient is finite, and every other row got a nonzero output.
    ``options``: more backend keywords (a window, sinks, ...), none of which gives those rows a key."""
    empty = q.shape[-2] - k.shape[-2]
    assert empty > 0
    out, dq, dk, dv, *rest = run_with_grads(fn, q, k, v, dout, causal=True, **options)
    assert torch.equal(out[..., :empty, :], torch.zeros_like(out[..., :empty, :]))
    assert torch.equal(dq[..., :empty, :], torch.zeros_like(dq[..., :empty, :]))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv, *rest[: len(rest) - bool(options.get("return_lse"))]))
    assert out[..., empty:, :].abs().amax(dim=-1).gt(0).all()
    if options.get("return_lse"):
        lse = rest[-1]
        assert torch.isneginf(lse[..., :empty]).all() and torch.isfinite(lse[..., empty:]).all()


def rows_without_keys(t_q: int, kv_lens: torch.Tensor) -> torch.Tensor:
    """(b, t_q) bool: under causal attention with per-row key lengths, query ``i`` of row ``r`` sits at position
    ``i + kv_lens[r] - t_q``, so it sees no key when that is negative."""
    return torch.arange(t_q).view(1, -1) + kv_lens.cpu().view(-1, 1) - t_q < 0  # (b, t_q)


def assert_kv_lens_padding_is_ignored(
    fn: Fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, kv_lens: torch.Tensor, **options
) -> None:
    """Keys/values past each row's length are ignored: NaN there changes nothing (outputs and gradients equal
    to those with finite padding, bit for bit), their dk and dv are zero, and under causal the queries that
    see no key (``kv_lens[r] < t_q``) output zeros with zero dq (lse ``-inf``), every gradient finite."""
    t_k = k.shape[2]
    past = torch.arange(t_k).view(1, 1, -1, 1) >= kv_lens.cpu().view(-1, 1, 1, 1)  # (b, 1, t_k, 1)
    poisoned_k, poisoned_v = (x.masked_fill(past.to(x.device), float("nan")) for x in (k, v))
    clean = run_with_grads(fn, q, k, v, dout, kv_lens=kv_lens, **options)
    poisoned = run_with_grads(fn, q, poisoned_k, poisoned_v, dout, kv_lens=kv_lens, **options)
    for got, want in zip(poisoned, clean, strict=True):
        assert torch.equal(got, want), "the padding past kv_lens changed a result"
    out, dq, dk, dv, *rest = clean
    grads = (dq, dk, dv, *rest[: len(rest) - bool(options.get("return_lse"))])  # (the lse has -inf rows)
    assert all(torch.isfinite(g).all() for g in grads)
    for grad in (dk, dv):
        assert torch.equal(grad.masked_fill(~past.to(grad.device), 0.0), torch.zeros_like(grad))
    if options.get("causal", True):
        empty = rows_without_keys(q.shape[2], kv_lens).to(q.device)[:, None, :, None]  # (b, 1, t_q, 1)
        assert torch.equal(out.masked_fill(~empty, 0.0), torch.zeros_like(out))
        assert torch.equal(dq.masked_fill(~empty, 0.0), torch.zeros_like(dq))
        if options.get("return_lse"):
            lse = rest[-1]
            assert torch.equal(torch.isneginf(lse), empty.squeeze(-1).expand(lse.shape))
