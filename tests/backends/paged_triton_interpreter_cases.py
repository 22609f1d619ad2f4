"""The paged_decode Triton kernel on the CPU, in Triton's interpreter: run by test_paged_triton.py in a subprocess.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton, so test_paged_triton.py runs
this file (not collected on its own: no ``test_`` prefix) as ``TRITON_INTERPRET=1 python -m pytest <file>``.
Pages of 16 slots (the kernel's smallest), so the cases span several pages; bfloat16 is left to CUDA (Triton
3.6's interpreter computes bfloat16 ``tl.dot`` wrongly, see flash_triton_interpreter_cases.py). Error bounds:
FlashAttention's rule (paged_cases.py), 2x the naive backend's error against the float64 reference.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paged_cases import assert_paged_matches_reference, make_paged_inputs, run_paged

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.paged_torch import paged_torch_attention
from attnlab.backends.paged_triton import paged_triton_attention

pytest.importorskip("triton")

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 before triton is imported"
)

# name: (kv_lens, h, h_kv, t_q, options)
CASES = {
    "one_page": ([5], 2, 2, 1, {}),
    "many_pages_ragged": ([1, 17, 40, 64], 2, 2, 1, {}),
    "queries_before_the_first_key": ([3, 40], 2, 2, 5, {}),
    "gqa": ([33, 20], 8, 2, 3, {}),
    "mqa_many_row_blocks": ([50, 9], 24, 1, 3, {}),  # 72 packed rows: two row blocks of 64
    "window": ([60, 7, 35], 4, 2, 3, {"window": 20}),
    "window_inside_one_page": ([64, 30], 2, 2, 2, {"window": 3}),
    "softcap_and_sinks": ([45, 2], 4, 2, 2, {"softcap": 2.0, "sinks": torch.tensor([0.5, -1.0, 2.0, 0.0])}),
    "alibi": ([39, 16], 4, 2, 2, {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])}),
    "not_causal": ([23, 48], 2, 2, 4, {"causal": False}),
}


@pytest.mark.parametrize("name", CASES)
def test_case(name):
    kv_lens, h, h_kv, t_q, options = CASES[name]
    inputs = make_paged_inputs(kv_lens, h, t_q, 16, 16, h_kv=h_kv, seed=len(name))
    assert_paged_matches_reference(paged_triton_attention, inputs, **options)


def test_float16_a_wide_head_and_permuted_pages():
    inputs = make_paged_inputs([37, 20], 4, 2, 40, 16, h_kv=2, dtype=torch.float16, spare_blocks=6, seed=3)
    assert_paged_matches_reference(paged_triton_attention, inputs, window=25)


def test_matches_the_torch_spec():
    # The same online softmax over the same pages: the kernel and the PyTorch spec agree to float32 rounding of
    # the output's magnitude (64 ulps: exp2 versus exp, and a different order of the sums).
    inputs = make_paged_inputs([50, 21, 8], 4, 2, 16, 16, h_kv=2, seed=4)
    got = run_paged(paged_triton_attention, inputs, window=30, return_lse=True)
    want = run_paged(paged_torch_attention, inputs, window=30, return_lse=True)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= 64 * torch.finfo(torch.float32).eps * b.abs().max()


def test_through_the_registry():
    inputs = make_paged_inputs([20, 3], 2, 1, 16, 16, seed=5)
    args = (inputs.q, inputs.key_pages, inputs.value_pages, inputs.block_table, inputs.kv_lens, AttentionSpec())
    with torch.no_grad():
        for name in ("flash_triton", "flash_decode_triton"):
            assert torch.equal(BACKENDS[name].attend_paged(*args), paged_triton_attention(*args))
            assert torch.equal(BACKENDS[name].attend_paged(*args, check_values=False), paged_triton_attention(*args))


@pytest.mark.parametrize("block_size", [8, 24])
def test_pages_the_kernel_cannot_tile_are_refused(block_size):
    inputs = make_paged_inputs([20], 2, 1, 16, block_size)
    with pytest.raises(ValueError, match=f"power of two >= 16, got {block_size}"):
        run_paged(paged_triton_attention, inputs)


def test_non_contiguous_inputs():
    inputs = make_paged_inputs([40, 9], 4, 2, 16, 16, h_kv=2, seed=7)
    inputs.q = inputs.q.transpose(1, 2).contiguous().transpose(1, 2)  # (b, h, t_q, d), strided
    for name in ("key_pages", "value_pages"):  # slot-major pages viewed as (num_blocks, h_kv, bs, d)
        setattr(inputs, name, getattr(inputs, name).transpose(1, 2).contiguous().transpose(1, 2))
    inputs.block_table = inputs.block_table.t().contiguous().t()
    assert not inputs.q.is_contiguous() and not inputs.key_pages.is_contiguous()
    assert_paged_matches_reference(paged_triton_attention, inputs, window=21)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kv_lens=st.lists(st.integers(1, 50), min_size=1, max_size=3),
    t_q=st.integers(1, 5),
    group=st.sampled_from([1, 3]),
    window=st.none() | st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_fuzz_against_the_reference(kv_lens, t_q, group, window, seed):
    inputs = make_paged_inputs(kv_lens, 2 * group, t_q, 16, 16, h_kv=2, seed=seed)
    assert_paged_matches_reference(paged_triton_attention, inputs, window=window, softcap=5.0)


@pytest.mark.parametrize("num_splits", [3, 64])
def test_splits_match_the_reference_and_one_split(num_splits):
    # Ragged rows (1 and 5 pages) cut into splits, some of them empty for the short rows; merged on the lse with
    # the sinks joined once. Against the reference (FlashAttention's rule) and against one split (64 float32 ulps
    # of the magnitude: the same pages, merged in another order).
    inputs = make_paged_inputs([70, 5], 2, 2, 16, 16, h_kv=1, seed=num_splits)
    options = {"window": 40, "sinks": torch.tensor([0.5, -1.0]), "softcap": 4.0}

    def split_fn(*args):
        return paged_triton_attention(*args, num_splits=num_splits)

    assert_paged_matches_reference(split_fn, inputs, **options)
    got = run_paged(split_fn, inputs, return_lse=True, **options)
    want = run_paged(paged_triton_attention, inputs, return_lse=True, **options)
    for a, b in zip(got, want, strict=True):
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a))
        assert (a - b)[finite].abs().max() <= 64 * torch.finfo(torch.float32).eps * b[finite].abs().max()


@pytest.mark.parametrize("num_splits", [0, -2, True, 1.5])
def test_bad_num_splits_are_refused(num_splits):
    inputs = make_paged_inputs([20], 2, 1, 16, 16)
    with pytest.raises(ValueError, match=re.escape(f"num_splits must be a positive int or None, got {num_splits!r}")):
        run_paged(lambda *args: paged_triton_attention(*args, num_splits=num_splits), inputs)
