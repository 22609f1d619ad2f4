"""flash_triton's kernels on the CPU, in Triton's interpreter: run by test_flash_triton.py in a subprocess.

Triton decides at import time whether its own library functions are compiled or interpreted, so
``TRITON_INTERPRET=1`` must be in the environment before anything imports triton; other test modules
of the main pytest process may have imported it already. test_flash_triton.py therefore runs this
file (not collected on its own: no ``test_`` prefix) as ``TRITON_INTERPRET=1 python -m pytest <file>``.

The interpreter executes each program as NumPy calls, so sizes are the issue's "smaller pairs of the
same kind": lengths up to 97, (t_q, t_k) pairs up to 130, one (b, h) pair or two. Block sizes of 16
and 32 make every case span several blocks with ragged last tiles. bfloat16 is left to the CUDA tests:
Triton 3.6's interpreter computes bfloat16 ``tl.dot`` wrongly (errors near 1e10 on a 16x16 product,
measured with triton 3.6.0 and numpy 2.4), while float16 and float32 are exact there.
"""

from __future__ import annotations

import os

import pytest
import torch
from flash_reference import (
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.flash_triton import FlashTritonConfig
from attnlab.kernels.config import KernelConfig

flash_triton_attention = BACKENDS["flash_triton"]


def with_config(config):
    """flash_triton through the registry with explicit kernel block sizes."""
    return lambda q, k, v, **options: flash_triton_attention.attend(q, k, v, AttentionSpec(**options), config=config)


pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 before triton is imported"
)

SMALL = FlashTritonConfig(*(KernelConfig(16, 16, num_warps=1, num_stages=1) for _ in range(3)))
MIXED = FlashTritonConfig(  # query and key blocks of different sizes, in both backward kernels
    fwd=KernelConfig(32, 16, 1, 1), dq=KernelConfig(16, 32, 1, 1), dkdv=KernelConfig(32, 16, 1, 1)
)


def flash(config: FlashTritonConfig | None = SMALL):
    return with_config(config)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 17, 97, 113, 257])
def test_sequence_lengths(t, causal):
    q, k, v, dout = make_inputs(1, 2, t, t, 16, seed=t)
    assert_matches_reference(flash(None), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("t_q", "t_k"), [(1, 239), (3, 799), (127, 513), (64, 63), (239, 1), (799, 3), (513, 127), (63, 64)]
)
def test_unequal_lengths(t_q, t_k, causal):
    q, k, v, dout = make_inputs(1, 1, t_q, t_k, 16, seed=t_q + t_k)
    assert_matches_reference(flash(MIXED), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("head_dim", [16, 24, 32, 64, 128])
def test_head_dims(head_dim):
    q, k, v, dout = make_inputs(1, 1, 33, 40, head_dim, seed=head_dim)
    assert_matches_reference(flash(None), q, k, v, dout, causal=True)


def test_float16():
    q, k, v, dout = make_inputs(1, 2, 45, 50, 32, dtype=torch.float16, seed=2)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_rows_without_keys_are_zero_with_zero_finite_gradients():
    q, k, v, dout = make_inputs(1, 2, 40, 25, 16, seed=3)  # first 15 queries see no key
    assert_rows_without_keys_are_zero(flash(), q, k, v, dout)


def test_inputs_scaled_by_five_stay_finite():
    q, k, v, dout = make_inputs(1, 2, 50, 50, 32, scale=5.0, seed=5)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_non_contiguous_inputs_and_output_gradient():
    q, k, v, dout = make_inputs(2, 2, 21, 35, 16, contiguous=False, seed=6)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_empty_batch_and_no_keys():
    q, k, v, dout = make_inputs(0, 2, 9, 9, 16)
    out, dq, *_ = run_with_grads(flash(), q, k, v, dout, causal=True)
    assert out.shape == (0, 2, 9, 16) and dq.shape == q.shape
    q, k, v, dout = make_inputs(1, 2, 5, 0, 16)
    out, dq, *_ = run_with_grads(flash(), q, k, v, dout, causal=False)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(dq, torch.zeros_like(dq))


def test_forward_is_bitwise_repeatable():
    q, k, v, _ = make_inputs(1, 2, 40, 40, 16, seed=7)
    first = flash_triton_attention(q, k, v)
    assert torch.equal(first, flash_triton_attention(q, k, v))


def test_multi_head_implementation_matches_reference():
    from attnlab.check import check_implementations

    (result,) = check_implementations(["flash_triton"], batch=2, seq_len=19, d_in=32, d_out=32, num_heads=2)
    assert result.status == "pass", result
