"""One query chunk over one key chunk at global positions equals the explicitly masked computation.

Every block kind (full, diagonal, skip, band) occurs in the sweep; the band path reverses chunks and splits
rows, so its gradients are checked too. Both sides are float64 and the same math up to summation order, so
they agree to 1e-12 of the magnitude (float64 rounding of these sizes is ~1e-15; a wrong mask errs by ~1e-1).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.parallel.blocks import BlockKind, block_attention, block_kind

TOKENS = 24
TOL = 1e-12


def _attend(backend: str):
    def attend(q, k, v, causal, window):
        return BACKENDS[backend].attend(q, k, v, AttentionSpec(causal=causal, window=window, return_lse=True))

    return attend


def _explicit(q, k, v, q_start, k_start, window):
    """Causal attention of queries at q_start.. over keys at k_start.. with an explicit boolean mask."""
    q_pos = torch.arange(q_start, q_start + q.shape[2]).unsqueeze(1)  # (m, 1)
    k_pos = torch.arange(k_start, k_start + k.shape[2]).unsqueeze(0)  # (1, n)
    visible = (k_pos <= q_pos) & ((k_pos > q_pos - window) if window else True)  # (m, n)
    keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (b, h, n, d)
    values = v.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (b, h, n, d)
    scores = (q @ keys.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(~visible, float("-inf"))  # (b, h, m, n)
    lse = torch.logsumexp(scores, dim=-1)  # (b, h, m)
    probs = torch.where(visible, torch.exp(scores - torch.where(lse.isinf(), 0, lse).unsqueeze(-1)), 0.0)
    return probs @ values, lse  # (b, h, m, d), (b, h, m)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, TOKENS, 8, generator=gen, dtype=torch.float64)  # (b, h, t, d)
    k, v = (torch.randn(1, 2, TOKENS, 8, generator=gen, dtype=torch.float64) for _ in range(2))  # GQA: h_kv = 2
    return q, k, v


@pytest.mark.parametrize("backend", ["naive", "flash_torch"])
def test_every_chunk_pair_matches_the_explicit_mask(backend):
    q, k, v = _inputs()
    kinds = set()
    for window in (None, 1, 3, 5, 11):
        for size in (3, 4, 6):
            for q_start in range(0, TOKENS, size):
                for k_start in range(0, TOKENS, size):
                    rows, keys = slice(q_start, q_start + size), slice(k_start, k_start + size)
                    kinds.add(block_kind(q_start, size, k_start, size, True, window))
                    got = block_attention(
                        q[:, :, rows], k[:, :, keys], v[:, :, keys], q_start, k_start, True, window, _attend(backend)
                    )
                    out, lse = _explicit(q[:, :, rows], k[:, :, keys], v[:, :, keys], q_start, k_start, window)
                    if got is None:
                        assert torch.isneginf(lse).all()
                        continue
                    assert torch.equal(torch.isneginf(got[1]), torch.isneginf(lse))
                    assert (got[0] - out).abs().max() <= TOL * out.abs().max().clamp_min(1)
                    finite = ~torch.isneginf(lse)
                    assert (got[1][finite] - lse[finite]).abs().max() <= TOL * lse[finite].abs().max()
    assert kinds == set(BlockKind)


def test_band_gradients_match_the_explicit_mask():
    q, k, v = (t[:, :, :6].clone().requires_grad_() for t in _inputs())
    q_late = q  # queries at positions 6..11 over keys 0..5, window 5: a band
    assert block_kind(6, 6, 0, 6, True, 5) is BlockKind.BAND
    dout = torch.randn(1, 4, 6, 8, dtype=torch.float64)  # (b, h, m, d)
    dlse = torch.randn(1, 4, 6, dtype=torch.float64)  # (b, h, m)
    grads = []
    for fn in (
        lambda: block_attention(q_late, k, v, 6, 0, True, 5, _attend("naive")),
        lambda: _explicit(q_late, k, v, 6, 0, 5),
    ):
        out, lse = fn()
        loss = (out * dout).sum() + (torch.where(lse.isinf(), 0, lse) * dlse).sum()
        grads.append(torch.autograd.grad(loss, (q, k, v)))
    for got, expected in zip(*grads, strict=True):
        assert (got - expected).abs().max() <= TOL * expected.abs().max()


def test_not_causal_is_full_and_overlapping_chunks_are_refused():
    assert block_kind(8, 4, 0, 4, False, None) is BlockKind.FULL
    with pytest.raises(ValueError, match="overlap"):
        block_kind(4, 4, 2, 4, True, None)
