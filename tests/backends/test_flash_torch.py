"""flash_torch against the float64 reference: lengths, (t_q, t_k) pairs, empty rows, scale, strides, gradcheck.

Error bounds are FlashAttention's rule (see flash_reference.py): at most 2x the naive backend's error in the
same dtype for the output, 3x for dq/dk/dv, plus a floor scaled by the reference's magnitude.
Small blocks (16 to 64) make every case cross several blocks, with ragged last tiles.
"""

from __future__ import annotations

import pytest
import torch
from flash_reference import (
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.flash_torch import flash_torch_forward

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def flash(block_m: int = 32, block_n: int = 16):
    """flash_torch through the registry, with small blocks so every case crosses several of them."""

    def attend(q, k, v, **options):
        return BACKENDS["flash_torch"].attend(q, k, v, AttentionSpec(**options), block_m=block_m, block_n=block_n)

    return attend


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 17, 97, 113, 257])
def test_sequence_lengths(t, causal):
    q, k, v, dout = make_inputs(2, 2, t, t, 32, seed=t)
    assert_matches_reference(flash(), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("t_q", "t_k"), [(1, 239), (3, 799), (127, 513), (1024, 1023), (239, 1), (799, 3), (513, 127), (1023, 1024)]
)
def test_unequal_lengths(t_q, t_k, causal):
    q, k, v, dout = make_inputs(1, 2, t_q, t_k, 16, seed=t_q + t_k)
    assert_matches_reference(flash(128, 64), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    q, k, v, dout = make_inputs(1, 3, 70, 90, 32, dtype=dtype, seed=1)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_rows_without_keys_are_zero_with_zero_finite_gradients():
    # t_q = 40 > t_k = 25: bottom-right alignment leaves the first 15 queries with no visible key.
    q, k, v, dout = make_inputs(2, 2, 40, 25, 16, seed=3)
    assert_rows_without_keys_are_zero(flash(16, 8), q, k, v, dout)


def test_inputs_scaled_by_five_stay_finite():
    # Scores up to ~25x larger: exp would overflow without the running max.
    q, k, v, dout = make_inputs(1, 2, 150, 150, 32, scale=5.0, seed=5)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_non_contiguous_inputs_and_output_gradient():
    q, k, v, dout = make_inputs(2, 3, 45, 61, 16, contiguous=False, seed=6)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_empty_batch():
    q, k, v, dout = make_inputs(0, 2, 9, 9, 16)
    out, dq, dk, dv = run_with_grads(flash(), q, k, v, dout, causal=True)
    assert out.shape == (0, 2, 9, 16) and dq.shape == q.shape and dk.shape == dv.shape == k.shape


def test_forward_is_bitwise_repeatable():
    q, k, v, _ = make_inputs(2, 2, 100, 100, 32, seed=7)
    first = BACKENDS["flash_torch"](q, k, v)
    assert all(torch.equal(first, BACKENDS["flash_torch"](q, k, v)) for _ in range(2))


def test_log_sum_exp_is_saved_and_plus_infinity_for_rows_without_keys():
    q, k, v, _ = make_inputs(1, 1, 6, 4, 8, dtype=torch.float64, seed=8)
    _, lse = flash_torch_forward(q, k, v, block_m=4, block_n=2)
    scores = (q @ k.transpose(-2, -1)) * 8**-0.5  # (1, 1, 6, 4)
    visible = torch.arange(4)[None, :] <= torch.arange(6)[:, None] - 2  # bottom-right, offset t_k - t_q = -2
    expected = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), dim=-1)  # -inf rows 0 and 1
    assert torch.equal(lse[..., :2], torch.full_like(lse[..., :2], float("inf")))
    torch.testing.assert_close(lse[..., 2:], expected[..., 2:], rtol=0, atol=1e-12)  # float64 rounding


@pytest.mark.parametrize(("t_q", "t_k", "causal"), [(5, 7, True), (7, 5, True), (6, 6, False), (4, 9, False)])
def test_gradcheck_float64(t_q, t_k, causal):
    q, k, v, _ = make_inputs(1, 2, t_q, t_k, 4, dtype=torch.float64, seed=t_q * t_k)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *qkv: flash(2, 3)(*qkv, causal=causal), inputs)


def test_dropout_and_bad_block_sizes_are_refused():
    q, k, v, _ = make_inputs(1, 1, 4, 4, 8)
    with pytest.raises(ValueError, match="does not support dropout"):
        BACKENDS["flash_torch"](q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="block_m must be a positive integer, got 0"):
        flash(0, 3)(q, k, v)
    with pytest.raises(ValueError, match="must agree in batch and head_dim"):
        BACKENDS["flash_torch"](q, k[..., :4], v[..., :4])


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("t_q", "t_k"), [(97, 97), (127, 513), (513, 127)])
def test_cuda(t_q, t_k, dtype):
    q, k, v, dout = make_inputs(2, 2, t_q, t_k, 64, dtype=dtype, device="cuda", seed=t_q)
    assert_matches_reference(flash(64, 64), q, k, v, dout, causal=True)
