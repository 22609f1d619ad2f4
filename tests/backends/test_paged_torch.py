"""paged_torch: paged attention in PyTorch against the float64 reference, run row by row on contiguous keys.

Error bounds: FlashAttention's rule (paged_cases.py): out and lse within 2x the naive backend's error
against the float64 reference, plus 8 float32 ulps of the reference's magnitude. Every slot no row owns is
NaN, so reading one fails the finiteness check.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paged_cases import assert_paged_matches_reference, make_paged_inputs, run_paged

from attnlab.backends import BACKENDS, PAGED, AttentionSpec, backends_with
from attnlab.backends.paged_torch import FEATURES, paged_key_bounds, paged_torch_attention

# name: (kv_lens, h, h_kv, t_q, block_size, options)
CASES = {
    "one_block": ([5], 2, 2, 1, 8, {}),
    "many_blocks_ragged": ([1, 9, 33, 64], 2, 2, 1, 4, {}),
    "block_size_one": ([3, 6], 2, 1, 2, 1, {}),
    "queries_before_the_first_key": ([3, 20], 2, 2, 5, 4, {}),  # row 0: 2 queries at p < 0 see nothing
    "gqa": ([17, 30], 8, 2, 3, 4, {}),
    "mqa": ([12, 5], 4, 1, 2, 8, {}),
    "window": ([40, 7, 23], 4, 2, 3, 4, {"window": 6}),
    "window_of_one": ([10, 3], 2, 2, 2, 4, {"window": 1}),
    "softcap": ([25, 9], 4, 2, 2, 8, {"softcap": 2.0}),
    "sinks": ([25, 1], 4, 2, 2, 4, {"sinks": torch.tensor([0.5, -1.0, 2.0, 0.0])}),
    "alibi": ([19, 6], 4, 2, 2, 4, {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])}),
    "not_causal": ([11, 30], 2, 2, 4, 8, {"causal": False}),
    "everything": (
        [50, 13, 2],
        4,
        2,
        4,
        4,
        {"window": 9, "softcap": 3.0, "sinks": torch.tensor([1.0, -0.5, 0.0, 2.0]), "scale": 0.3},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_case(name):
    kv_lens, h, h_kv, t_q, block_size, options = CASES[name]
    inputs = make_paged_inputs(kv_lens, h, t_q, 16, block_size, h_kv=h_kv, seed=len(name))
    assert_paged_matches_reference(paged_torch_attention, inputs, **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    inputs = make_paged_inputs([21, 4], 4, 2, 16, 4, h_kv=2, dtype=dtype, seed=1)
    assert_paged_matches_reference(paged_torch_attention, inputs, window=7, sinks=torch.zeros(4))


def test_a_wide_table_and_spare_pages():
    inputs = make_paged_inputs([6, 13], 2, 1, 8, 4, table_width=9, spare_blocks=10, seed=2)
    assert_paged_matches_reference(paged_torch_attention, inputs)


def test_the_rule_catches_a_wrong_table():
    # The check can fail: reading row 1's pages for row 0 and back errs by the whole magnitude.
    inputs = make_paged_inputs([12, 12], 2, 1, 8, 4, seed=3)
    inputs.block_table = inputs.block_table.flip(0)
    with pytest.raises(AssertionError, match="out: error"):
        assert_paged_matches_reference(paged_torch_attention, inputs)


def test_pages_outside_the_window_are_never_read():
    inputs = make_paged_inputs([64, 30], 2, 1, 8, 4, seed=4)
    clean = run_paged(paged_torch_attention, inputs, window=5)[0]
    row0_pages = inputs.block_table[0, :15].long()  # keys 0..59 of row 0; its window is keys 59..63
    inputs.key_pages[row0_pages[:-1]] = float("nan")  # pages of keys 0..55
    inputs.value_pages[row0_pages[:-1]] = float("nan")
    got = run_paged(paged_torch_attention, inputs, window=5)[0]
    assert torch.isfinite(clean).all() and torch.equal(got, clean)


def test_key_bounds_per_row():
    bounds = paged_key_bounds(torch.tensor([3, 10]), 4, AttentionSpec(window=3))
    assert bounds.pos.tolist() == [[-1, 0, 1, 2], [6, 7, 8, 9]]
    assert bounds.hi.tolist() == [[-1, 0, 1, 2], [6, 7, 8, 9]]
    assert bounds.lo.tolist() == [[0, 0, 0, 0], [4, 5, 6, 7]]


def test_empty_batch():
    inputs = make_paged_inputs([4], 2, 1, 8, 4)
    q = inputs.q[:0]
    out = paged_torch_attention(q, inputs.key_pages, inputs.value_pages, inputs.block_table[:0], inputs.kv_lens[:0],
                                AttentionSpec())  # fmt: skip
    assert out.shape == (0, 2, 1, 8)
    no_queries = inputs.q[:, :, :0]  # (1, 2, 0, 8)
    args = (inputs.key_pages, inputs.value_pages, inputs.block_table, inputs.kv_lens, AttentionSpec(return_lse=True))
    out, lse = paged_torch_attention(no_queries, *args)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)


# -- the registry ------------------------------------------------------------------------------------------


def test_registry_entry_points():
    assert {"flash_torch", "flash_decode_torch"} <= set(backends_with(PAGED))
    assert "naive" not in backends_with(PAGED)
    inputs = make_paged_inputs([9, 3], 2, 1, 8, 4, seed=5)
    args = (inputs.q, inputs.key_pages, inputs.value_pages, inputs.block_table, inputs.kv_lens, AttentionSpec())
    with torch.no_grad():
        got = BACKENDS["flash_torch"].attend_paged(*args)
    assert torch.equal(got, paged_torch_attention(*args))
    with pytest.raises(ValueError, match="the naive backend has no paged attention; backends that do: flash_torch"):
        BACKENDS["naive"].attend_paged(*args)
    with torch.no_grad():
        unchecked = BACKENDS["flash_decode_torch"].attend_paged(*args, check_values=False)
    assert torch.equal(unchecked, got)
    message = "the flash_torch backend's paged attention takes no block_n; its keywords: check_values"
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS["flash_torch"].attend_paged(*args, block_n=16)


def test_check_values_false_skips_the_table_check(small):
    table = small.block_table.clone()
    table[1, 0] = -1  # would be refused by check_paged_values; unchecked, it reads page -1 (the last one)
    with torch.no_grad():
        out = paged_torch_attention(small.q, small.key_pages, small.value_pages, table, small.kv_lens,
                                    AttentionSpec(), check_values=False)  # fmt: skip
    assert out.shape == small.q.shape


# -- refusals ----------------------------------------------------------------------------------------------


def _call(inputs, spec=None, **replace):
    args = {
        "q": inputs.q,
        "key_pages": inputs.key_pages,
        "value_pages": inputs.value_pages,
        "block_table": inputs.block_table,
        "kv_lens": inputs.kv_lens,
        "spec": AttentionSpec() if spec is None else spec,
    }
    args.update(replace)
    return paged_torch_attention(**args)


@pytest.fixture
def small():
    return make_paged_inputs([9, 3], 4, 1, 8, 4, h_kv=2, seed=6)


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"kv_lens": torch.tensor([9, 0], dtype=torch.int32)}, "kv_lens must lie in [1, 12]"),
        ({"kv_lens": torch.tensor([13, 3], dtype=torch.int32)}, "kv_lens must lie in [1, 12]"),
        ({"kv_lens": torch.tensor([9.0, 3.0])}, "kv_lens must be an int32/int64 tensor of shape (2,)"),
        ({"kv_lens": torch.tensor([9], dtype=torch.int32)}, "kv_lens must be an int32/int64 tensor of shape (2,)"),
        ({"block_table": torch.zeros(3, 3, dtype=torch.int32)}, "block_table must be an int32/int64 tensor of shape"),
        ({"spec": "causal"}, "spec must be an AttentionSpec, got str"),
        ({"key_pages": torch.zeros(5, 2, 4, 4)}, "key_pages torch.Size"),
        ({"value_pages": torch.zeros(5, 2, 4, 8, dtype=torch.float64)}, "value_pages is torch.float64 on cpu"),
        ({"key_pages": torch.zeros(5, 3, 4, 8), "value_pages": torch.zeros(5, 3, 4, 8)}, "q has 4 heads and the"),
        ({"q": torch.zeros(2, 4, 1, 8, dtype=torch.int64)}, "q must be a 4-D floating-point tensor"),
    ],
)
def test_bad_inputs_are_refused(small, replace, message):
    if message == "key_pages torch.Size":
        message = "key_pages (5, 2, 4, 4) and value_pages"
    with pytest.raises(ValueError, match=re.escape(message)):
        _call(small, **replace)


def test_a_table_entry_outside_the_pool_is_refused(small):
    table = small.block_table.clone()
    table[1, 0] = small.key_pages.shape[0]
    with pytest.raises(ValueError, match=re.escape(f"block_table[1, 0] = {table[1, 0]} is not a page in [0,")):
        _call(small, block_table=table)
    table[1, 0] = -1
    with pytest.raises(ValueError, match=re.escape("block_table[1, 0] = -1 is not a page")):
        _call(small, block_table=table)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (AttentionSpec(dropout_p=0.1), "paged_torch's paged attention does not support dropout"),
        (AttentionSpec(sinks=torch.zeros(3)), "sinks must be a floating-point tensor of shape (4,)"),
        (AttentionSpec(alibi_slopes=torch.zeros(4, dtype=torch.int64)), "alibi_slopes must be a floating-point"),
    ],
)
def test_options_it_cannot_honour_are_refused(small, spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _call(small, spec)


def test_packed_sequences_are_refused():
    inputs = make_paged_inputs([4, 4], 2, 2, 8, 4)
    with pytest.raises(ValueError, match="does not support seq_lens"):
        _call(inputs, AttentionSpec(seq_lens=(1, 1)))


def test_inputs_that_require_grad_are_refused(small):
    with pytest.raises(ValueError, match=re.escape("forward-only (decoding) but q require grad")):
        _call(small, q=small.q.clone().requires_grad_())
    with torch.no_grad():
        assert _call(small, q=small.q.clone().requires_grad_()).shape == small.q.shape


def test_features_are_declared():
    assert FEATURES == {"gqa", "window", "softcap", "sinks", "alibi_slopes", "return_lse"}


def _as_views(inputs):
    """The same data in other layouts: q from a (b, t, h, d) buffer, pages from (num_blocks, bs, h_kv, d) ones."""
    inputs.q = inputs.q.transpose(1, 2).contiguous().transpose(1, 2)  # (b, h, t_q, d), strided
    for name in ("key_pages", "value_pages"):
        pages = getattr(inputs, name)
        setattr(inputs, name, pages.transpose(1, 2).contiguous().transpose(1, 2))  # vLLM-like slot-major pages
    inputs.block_table = inputs.block_table.t().contiguous().t()  # column-major table
    assert not inputs.q.is_contiguous() and not inputs.key_pages.is_contiguous()
    return inputs


def test_non_contiguous_inputs():
    inputs = _as_views(make_paged_inputs([30, 5], 4, 2, 8, 4, h_kv=2, seed=7))
    assert_paged_matches_reference(paged_torch_attention, inputs, window=11)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kv_lens=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    t_q=st.integers(1, 6),
    block_size=st.sampled_from([1, 3, 4, 16]),
    group=st.sampled_from([1, 2, 3]),
    window=st.none() | st.integers(1, 12),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_against_the_reference(kv_lens, t_q, block_size, group, window, causal, seed):
    inputs = make_paged_inputs(kv_lens, 2 * group, t_q, 8, block_size, h_kv=2, seed=seed)
    options = {"causal": causal or window is not None, "window": window, "sinks": torch.linspace(-1.0, 1.0, 2 * group)}
    assert_paged_matches_reference(paged_torch_attention, inputs, **options)
