"""Every implementation computes the same function: forward, input gradient and weight gradients agree
with the independent float64 reference (attnlab.reference) for shared weights."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impl_cases import CPU_IMPLS, Case, compare_with_reference, needs_square

from attnlab import IMPLEMENTATIONS, build

FIXED_CASES = [
    Case(batch=2, seq_len=1, d_in=8, d_out=8, num_heads=2, qkv_bias=False, context_length=4),  # one token
    Case(batch=3, seq_len=7, d_in=12, d_out=12, num_heads=3, qkv_bias=True, context_length=7),  # odd, t == ctx
    Case(batch=2, seq_len=13, d_in=16, d_out=16, num_heads=4, qkv_bias=False, context_length=32),  # t < ctx
    Case(batch=1, seq_len=9, d_in=20, d_out=12, num_heads=2, qkv_bias=True, context_length=16),  # d_in > d_out
    Case(batch=2, seq_len=5, d_in=6, d_out=16, num_heads=8, qkv_bias=False, context_length=5),  # d_in < d_out
]


def test_all_nine_notebook_implementations_are_registered():
    expected = {
        "wrapper", "ch03", "fused_qkv", "einsum", "sdpa", "sdpa_mask", "torch_mha", "torch_mha_fast", "flex",
    }  # fmt: skip
    assert expected <= set(IMPLEMENTATIONS)


def test_every_notebook_implementation_runs_on_this_cpu():
    assert {
        "wrapper",
        "ch03",
        "fused_qkv",
        "einsum",
        "sdpa",
        "sdpa_mask",
        "torch_mha",
        "torch_mha_fast",
        "flex",
    } <= set(CPU_IMPLS)


@pytest.mark.parametrize(
    ("name", "case"),
    [
        pytest.param(name, case, id=f"{name}-{case}")
        for name in CPU_IMPLS
        for case in FIXED_CASES
        if case.d_in == case.d_out or not needs_square(name)
    ],
)
def test_matches_reference_on_fixed_shapes(name, case):
    compare_with_reference(name, case)


# FlexAttention compiles for every new shape (seconds each), so the shape sweep leaves it out; the
# fixed shapes above cover it.
SWEEP_IMPLS = [name for name in CPU_IMPLS if name != "flex"]


@st.composite
def cases(draw, square: bool):
    num_heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 6))
    d_out = num_heads * head_dim
    d_in = d_out if square else draw(st.integers(1, 20))
    seq_len = draw(st.integers(1, 10))
    context_length = draw(st.integers(seq_len, 16))
    return Case(draw(st.integers(1, 3)), seq_len, d_in, d_out, num_heads, draw(st.booleans()), context_length)


@pytest.mark.parametrize("name", SWEEP_IMPLS)
def test_matches_reference_on_random_shapes(name):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases(square=needs_square(name)), seed=st.integers(0, 2**16))
    def check(case, seed):
        compare_with_reference(name, case, seed)

    check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ch03_and_wrapper_run_the_books_forward_pass_exactly(dtype):
    # They write the book's steps out (to compute half-precision scores in float32); in float32 and float64
    # the steps are the book's own, in the book's order, so the results are bitwise the book modules'.
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=dtype)  # (b, t, d_in)
    ch03 = build("ch03", d_in=6, d_out=8, num_heads=2, context_length=5, qkv_bias=True).to(dtype)
    assert torch.equal(ch03(x), ch03.mha(x))
    wrapper = build("wrapper", d_in=6, d_out=8, num_heads=2, context_length=5, qkv_bias=True).to(dtype)
    book_heads = torch.cat([head(x) for head in wrapper.heads], dim=-1)  # (b, t, d_out)
    assert torch.equal(wrapper(x), wrapper.out_proj(book_heads))
