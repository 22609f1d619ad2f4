"""Checks shared by flash_triton's interpreter cases and its CUDA tests (not a test module: no ``test_`` prefix).

Beyond flash_reference's rule for outputs and gradients: the returned lse and its gradient against the
float64 reference (the same FlashAttention rule), and a structural check that the kernels skip the key tiles
no query of a block can see (a window's work grows as ``t * window``, packed sequences' as ``sum t_i^2``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from flash_reference import FLOOR, max_error, run_with_grads

from attnlab.backends import BACKENDS

__all__ = ["alibi_slopes", "assert_lse_matches_reference", "assert_unseen_tiles_are_skipped", "sinks_for"]

Fn = Callable[..., torch.Tensor]
naive_attention = BACKENDS["naive"]


def sinks_for(h: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """One sink logit per query head, of the size of the scores (float32)."""
    return torch.randn(h, generator=torch.Generator().manual_seed(seed)).to(device)  # (h,)


def alibi_slopes(h: int, device: str = "cpu") -> torch.Tensor:
    """ALiBi's geometric slopes ``2**(-8 i / h)``, i = 1..h (float32)."""
    return 2.0 ** (-8.0 * torch.arange(1, h + 1, dtype=torch.float32, device=device) / h)  # (h,)


def _lse_and_grads(fn: Fn, q, k, v, dout, weights, causal: bool, options: dict) -> tuple[torch.Tensor, ...]:
    """lse, then the gradients (q, k, v[, sinks]) of ``<out, dout> + <lse, weights>`` over the rows with keys
    (``dout=None``: of the lse term alone, so the output gets no gradient at all)."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    leaves = [q, k, v]
    options = dict(options)
    if options.get("sinks") is not None:
        options["sinks"] = options["sinks"].detach().requires_grad_()
        leaves.append(options["sinks"])
    out, lse = fn(q, k, v, causal=causal, return_lse=True, **options)
    finite_lse = torch.where(torch.isfinite(lse), lse, 0.0)  # (b, h, t_q): -inf rows add nothing
    loss = (finite_lse * weights).sum() + (0.0 if dout is None else (out * dout).sum())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # the lse alone does not depend on v
    return (lse.detach(), *(torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves, strict=True)))


def assert_lse_matches_reference(fn: Fn, q, k, v, dout, *, causal: bool = True, **options) -> None:
    """The returned lse: float32, ``-inf`` exactly where the reference's is, else within 2x naive's error; the
    gradients through it (with the output's, unless ``dout`` is None) within 3x naive's error, both measured
    against float64."""
    weights = torch.randn(q.shape[:3], generator=torch.Generator().manual_seed(1)).to(q.device)  # (b, h, t_q)
    as64 = [None if t is None else t.detach().double().cpu() for t in (q, k, v, dout)]
    options64 = {
        name: value.detach().double().cpu() if isinstance(value, torch.Tensor) else value
        for name, value in options.items()
    }
    reference = _lse_and_grads(naive_attention, *as64, weights.double().cpu(), causal, options64)
    naive = _lse_and_grads(naive_attention, q, k, v, dout, weights, causal, options)
    actual = _lse_and_grads(fn, q, k, v, dout, weights, causal, options)
    lse, ref_lse = actual[0], reference[0]
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    no_key = ref_lse == float("-inf")
    assert torch.equal(lse.cpu() == float("-inf"), no_key), "lse is -inf exactly at the rows without keys"
    magnitude = max(ref.abs().max().item() for ref in (ref_lse[~no_key], *reference[1:]) if ref.numel())
    names = ("lse", "dq", "dk", "dv", "dsinks")
    factors = (2.0, 3.0, 3.0, 3.0, 3.0)
    for name, got, ref, base, factor in zip(names, actual, reference, naive, factors, strict=False):
        if name == "lse":
            got, ref, base = got.cpu()[~no_key], ref[~no_key], base.cpu()[~no_key]
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        err, naive_err = max_error(got, ref), max_error(base, ref)
        limit = factor * naive_err + FLOOR * magnitude
        assert err <= limit, f"{name}: error {err:.3g} > {factor} x naive's {naive_err:.3g} + floor"


def assert_unseen_tiles_are_skipped(
    fn: Fn, q, k, v, dout, *, keys: slice, rows: slice, causal: bool = True, **options
) -> None:
    """No program visits a key tile that none of its queries sees: NaN keys and values at ``keys`` leave the
    outputs and dq of ``rows`` and the dk, dv of every other key bitwise equal to a run without the NaNs.

    ``keys`` must be whole tiles seen by no query of ``rows`` and by no query of a block that holds one of
    ``rows``; the gradient flows from ``rows`` only. A kernel that loaded a NaN tile would spread it through
    ``0 * NaN`` into its whole block, even where the mask zeroes the probabilities.
    """
    dout = torch.zeros_like(dout).index_copy(2, torch.arange(q.shape[2])[rows].to(q.device), dout[:, :, rows])
    clean = run_with_grads(fn, q, k, v, dout, causal, **options)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, keys] = float("nan")
    poisoned_v[:, :, keys] = float("nan")
    with warnings.catch_warnings():  # queries that do see the NaN keys are NaN; the interpreter's NumPy says so
        warnings.simplefilter("ignore", RuntimeWarning)
        poisoned = run_with_grads(fn, q, poisoned_k, poisoned_v, dout, causal, **options)
    other_keys = torch.ones(k.shape[2], dtype=torch.bool, device=k.device)
    other_keys[keys] = False
    for name, index in (("out", 0), ("dq", 1)):
        got, want = poisoned[index][:, :, rows], clean[index][:, :, rows]
        assert torch.isfinite(want).all() and torch.equal(got, want), f"{name} of the rows read the unseen keys"
    for name, index in (("dk", 2), ("dv", 3)):
        got, want = poisoned[index][:, :, other_keys], clean[index][:, :, other_keys]
        assert torch.isfinite(want).all() and torch.equal(got, want), f"{name} read the rows of the unseen keys"
