"""Merging on the log-sum-exp: two halves of the keys give attention over all of them, and its gradients.

float64 throughout: the merged and the direct results are the same math up to rounding (~1e-15), so they
must agree to 1e-12 of the magnitude; a wrong weight errs by ~1e-1.
"""

from __future__ import annotations

import torch

from attnlab.backends import BACKENDS
from attnlab.parallel.merge import merge_into, part_grads

TOL = 1e-12
naive = BACKENDS["naive"]


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64)  # (b, h, t_q, d)
    k, v = (torch.randn(1, 2, 10, 4, generator=gen, dtype=torch.float64) for _ in range(2))  # (b, h, t_k, d)
    return q, k, v


def test_merging_two_key_halves_equals_attention_over_all_keys():
    q, k, v = _inputs()
    out_all, lse_all = naive(q, k, v, causal=False, return_lse=True)
    out = torch.zeros_like(q)  # (b, h, t_q, d): nothing merged yet
    lse = torch.full(q.shape[:3], float("-inf"), dtype=q.dtype)  # (b, h, t_q)
    for keys in (slice(0, 4), slice(4, 10)):
        merge_into(out, lse, *naive(q, k[:, :, keys], v[:, :, keys], causal=False, return_lse=True))
    assert (out - out_all).abs().max() <= TOL * out_all.abs().max()
    assert (lse - lse_all).abs().max() <= TOL * lse_all.abs().max()


def test_rows_without_keys_stay_zero_and_finite():
    out = torch.zeros(1, 1, 2, 3)  # (b, h, t, d)
    lse = torch.full((1, 1, 2), float("-inf"))  # (b, h, t)
    merge_into(out, lse, torch.zeros(1, 1, 2, 3), torch.tensor([[[float("-inf"), 0.5]]]))
    assert torch.equal(out[0, 0, 0], torch.zeros(3)) and torch.isneginf(lse[0, 0, 0])
    assert torch.isfinite(out).all() and lse[0, 0, 1] == 0.5


def test_part_grads_match_autograd_through_the_merge_formula():
    q, k, v = _inputs(1)
    parts = [naive(q, k[:, :, s], v[:, :, s], causal=False, return_lse=True) for s in (slice(0, 3), slice(3, 10))]
    leaves = [t.detach().requires_grad_() for part in parts for t in part]  # out_a, lse_a, out_b, lse_b
    lse = torch.logaddexp(leaves[1], leaves[3])  # (b, h, t_q)
    out = torch.exp(leaves[1] - lse).unsqueeze(-1) * leaves[0] + torch.exp(leaves[3] - lse).unsqueeze(-1) * leaves[2]
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    expected = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), leaves)
    for index in (0, 2):
        got = part_grads(dout, dlse, out.detach(), lse.detach(), leaves[index].detach(), leaves[index + 1].detach())
        for g, e in zip(got, expected[index : index + 2], strict=True):
            assert (g - e).abs().max() <= TOL * e.abs().max()
