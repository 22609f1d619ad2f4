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
    assert_kv_lens_padding_is_ignored,
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)
from flash_triton_checks import alibi_slopes, assert_lse_matches_reference, assert_unseen_tiles_are_skipped, sinks_for

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.flash_triton import FlashTritonConfig
from attnlab.kernels.config import KernelConfig

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from attnlab.kernels.launch import needs_int64_rows  # noqa: E402
from attnlab.kernels.scores import tanh  # noqa: E402

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


# -- the AttentionSpec features, alone and combined (FlashAttention's rule, gradients of q, k, v and sinks) --

FEATURES = {  # name: (heads, key/value heads, tokens, options)
    "gqa_6_2": (6, 2, 40, {}),
    "mqa_8_1": (8, 1, 33, {}),
    "window_1": (2, 2, 40, {"window": 1}),
    "window_3": (2, 2, 40, {"window": 3}),
    "window_longer_than_t": (2, 2, 40, {"window": 500}),
    "sinks": (2, 2, 40, {"sinks": sinks_for(2)}),
    "alibi": (2, 2, 40, {"alibi_slopes": alibi_slopes(2)}),
    "packed": (2, 2, 58, {"seq_lens": [1, 17, 40]}),
}


@pytest.mark.parametrize("name", FEATURES)
def test_each_feature_alone(name):
    h, h_kv, t, options = FEATURES[name]
    q, k, v, dout = make_inputs(1, h, t, t, 16, h_kv=h_kv, seed=len(name))
    assert_matches_reference(flash(), q, k, v, dout, causal=True, **options)


def test_softcap_30_with_inputs_scaled_by_five():
    # Scores reach +-200 here, so the cap is active: tanh saturates and its gradient 1 - tanh^2 is tested too.
    q, k, v, dout = make_inputs(1, 2, 40, 40, 32, scale=5.0, seed=8)
    assert_matches_reference(flash(), q, k, v, dout, causal=True, softcap=30.0)
    assert_matches_reference(flash(), q, k, v, dout, causal=False, softcap=30.0)


def test_gqa_window_softcap_sinks_alibi_combined():
    q, k, v, dout = make_inputs(1, 6, 45, 50, 24, h_kv=2, seed=9, contiguous=False)
    options = {"window": 19, "softcap": 5.0, "sinks": sinks_for(6, seed=9), "alibi_slopes": alibi_slopes(6)}
    assert_matches_reference(flash(MIXED), q, k, v, dout, causal=True, **options)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_sequences_with_gqa_and_sinks(causal):
    q, k, v, dout = make_inputs(1, 4, 58, 58, 16, h_kv=2, seed=10)
    options = {"seq_lens": [1, 17, 40], "sinks": sinks_for(4, seed=10)}
    assert_matches_reference(flash(MIXED), q, k, v, dout, causal=causal, **options)


@pytest.mark.parametrize(("t_q", "t_k"), [(13, 61), (61, 13)])
def test_window_with_unequal_lengths(t_q, t_k):
    # t_q > t_k: the first t_q - t_k queries see no key; the window cuts from below in both cases.
    q, k, v, dout = make_inputs(1, 2, t_q, t_k, 16, seed=t_q)
    assert_matches_reference(flash(MIXED), q, k, v, dout, causal=True, window=5, sinks=sinks_for(2))


@pytest.mark.parametrize("head_dim", [40, 59])
def test_features_at_head_dims_that_are_not_powers_of_two(head_dim):
    q, k, v, dout = make_inputs(1, 4, 33, 33, head_dim, h_kv=2, seed=head_dim)
    options = {"window": 9, "softcap": 20.0, "alibi_slopes": alibi_slopes(4), "sinks": sinks_for(4)}
    assert_matches_reference(flash(), q, k, v, dout, causal=True, **options)


def test_features_in_float16():
    # The sinks in the inputs' dtype, as a float16 model holds them: their gradient sums delta = rowsum(dO * O)
    # over the float16 output O (FlashAttention's backward), which the naive path keeps in float32.
    q, k, v, dout = make_inputs(1, 4, 40, 40, 32, h_kv=1, dtype=torch.float16, seed=11)
    options = {"window": 11, "softcap": 10.0, "sinks": sinks_for(4).half(), "seq_lens": [25, 15]}
    assert_matches_reference(flash(), q, k, v, dout, causal=True, **options)


def test_rows_without_keys_with_window_and_sinks():
    # 15 queries see no key: zero output and lse -inf (checked against the reference), finite gradients.
    q, k, v, dout = make_inputs(1, 2, 40, 25, 16, seed=12)
    options = {"window": 4, "sinks": sinks_for(2, seed=12)}
    assert_matches_reference(flash(), q, k, v, dout, causal=True, **options)
    out, dq, dk, dv, dsinks = run_with_grads(flash(), q, k, v, dout, causal=True, **options)
    assert torch.equal(out[:, :, :15], torch.zeros_like(out[:, :, :15]))
    assert torch.equal(dq[:, :, :15], torch.zeros_like(dq[:, :, :15]))
    assert all(torch.isfinite(g).all() for g in (dk, dv, dsinks))


def test_lse_and_its_gradient():
    q, k, v, dout = make_inputs(1, 4, 40, 25, 16, h_kv=2, seed=13)  # rows without keys: lse = -inf
    assert_lse_matches_reference(flash(MIXED), q, k, v, dout, causal=True, window=7, sinks=sinks_for(4))
    q, k, v, _ = make_inputs(1, 2, 37, 37, 16, seed=14)  # the loss uses the lse alone: no output gradient
    assert_lse_matches_reference(flash(), q, k, v, None, causal=False, softcap=4.0, alibi_slopes=alibi_slopes(2))


def test_no_keys_at_all_with_sinks_and_lse():
    q, k, v, _ = make_inputs(1, 2, 5, 0, 16)
    sinks = sinks_for(2).requires_grad_()
    out, lse = flash()(q, k, v, causal=False, sinks=sinks, return_lse=True)
    (dsinks,) = torch.autograd.grad(out.sum(), sinks)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(dsinks, torch.zeros_like(dsinks))
    assert lse.dtype == torch.float32 and (lse == float("-inf")).all()


def test_key_tiles_outside_windows_and_sequences_are_skipped():
    # Decoding-like: 16 queries at the end of 64 keys with a window of 3 see keys 45..63; tiles 0-31 are unseen.
    q, k, v, dout = make_inputs(1, 1, 16, 64, 16, seed=15)
    assert_unseen_tiles_are_skipped(flash(), q, k, v, dout, keys=slice(0, 32), rows=slice(0, 16), window=3)
    # Two packed sequences of 32 tokens, attending both ways: neither reads the other's keys or rows.
    q, k, v, dout = make_inputs(1, 1, 64, 64, 16, seed=16)
    for seen, unseen in ((slice(0, 32), slice(32, 64)), (slice(32, 64), slice(0, 32))):
        assert_unseen_tiles_are_skipped(flash(), q, k, v, dout, keys=unseen, rows=seen, causal=False, seq_lens=[32, 32])


# -- int64 offsets, the hand-written tanh, refusals ---------------------------------------------------------


def strided_over_a_huge_storage(shape, strides, sources):
    """Views of the given shape and strides, one per source tensor, over one storage of over 2**31 float16
    elements: 4 GiB of address space, of which only the few pages the views touch are ever written."""
    d = shape[3]
    extent = sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True)) + 1
    storage = torch.empty(extent + (len(sources) - 1) * d, dtype=torch.float16)
    views = [storage.as_strided(shape, strides, storage_offset=i * d) for i in range(len(sources))]
    for view, source in zip(views, sources, strict=True):
        view.copy_(source)
    return views


@pytest.mark.parametrize("layout", ["rows", "batches"])
def test_offsets_past_two_to_the_31_elements(layout):
    # The offset of the last row ("rows": row stride 2**27 x row 16) or of the last batch ("batches": batch
    # stride 2**30 x batch 2) is 2**31 elements, one past int32; every stride itself fits int32. An offset
    # computed in int32 wraps to -2**31 and reads outside the storage (in the interpreter: a crash).
    b, t, d = (1, 17, 16) if layout == "rows" else (3, 17, 16)
    strides = (2**31, 0, 2**27, 1) if layout == "rows" else (2**30, 0, 3 * d, 1)
    q, k, v, dout = make_inputs(b, 1, t, t, d, dtype=torch.float16, seed=17)
    q, k, v = strided_over_a_huge_storage((b, 1, t, d), strides, (q, k, v))
    assert needs_int64_rows(q) == (layout == "rows")  # batch and head offsets are int64 always
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


@triton.jit
def tanh_kernel(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, tanh(tl.load(X + offs)))


def test_tanh_within_two_float32_ulps():
    x = torch.cat([torch.linspace(-12.0, 12.0, 3072), torch.logspace(-8, 0, 512), -torch.logspace(-8, 0, 512)])
    y = torch.empty_like(x)
    tanh_kernel[(1,)](x, y, N=x.numel())
    exact = torch.tanh(x.double())
    relative = ((y.double() - exact).abs() / exact.abs()).max().item()
    assert relative <= 2 * torch.finfo(torch.float32).eps, relative  # torch.tanh itself errs by ~1 ulp


def test_alibi_slopes_that_require_grad_are_refused():
    q, k, v, _ = make_inputs(1, 2, 4, 4, 16)
    slopes = alibi_slopes(2).requires_grad_()
    with pytest.raises(ValueError, match="no gradient for alibi_slopes"):
        flash_triton_attention(q, k, v, alibi_slopes=slopes)
    with torch.no_grad():  # nothing to refuse without autograd
        flash_triton_attention(q, k, v, alibi_slopes=slopes)


# -- per-row key lengths (kv_lens): each program loads its row's length --------------------------------------

#: Ragged rows: all keys, one key, fewer keys than queries when t_q > 2 (those queries see none), a ragged tile.
KV_LENS = (40, 1, 2, 29)


@pytest.mark.parametrize("t_q", [1, 9])
@pytest.mark.parametrize(
    "options",
    [
        {"causal": True, "return_lse": True},
        {"causal": False},
        {"causal": True, "window": 7, "softcap": 5.0, "sinks": "sinks", "alibi_slopes": "alibi", "return_lse": True},
    ],
    ids=["causal", "non_causal", "everything"],
)
def test_kv_lens(t_q, options):
    q, k, v, dout = make_inputs(4, 4, t_q, 40, 16, h_kv=2, seed=t_q)
    options = dict(options)
    if options.get("sinks") == "sinks":
        options["sinks"] = sinks_for(4, seed=t_q)
    if options.get("alibi_slopes") == "alibi":
        options["alibi_slopes"] = alibi_slopes(4)
    assert_matches_reference(flash(MIXED), q, k, v, dout, kv_lens=torch.tensor(KV_LENS), **options)


@pytest.mark.parametrize("causal", [True, False])
def test_kv_lens_padding_is_never_read_and_rows_without_keys_are_zero(causal):
    q, k, v, dout = make_inputs(4, 4, 9, 40, 16, h_kv=1, seed=13)
    options = {"causal": causal, "sinks": sinks_for(4, seed=13), "return_lse": causal}
    assert_kv_lens_padding_is_ignored(flash(MIXED), q, k, v, dout, torch.tensor(KV_LENS, dtype=torch.int32), **options)
