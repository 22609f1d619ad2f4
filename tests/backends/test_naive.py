"""The naive backend (every feature) against the independent float64 reference, its float32 compute for half
inputs, and its dropout path.

The oracle is :func:`attnlab.reference.reference_core_attention` (Python loops over rows, no masks, written
from the spec's sentences). Every limit is relative to the reference's magnitude and justified where used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flash_reference import (
    assert_kv_lens_padding_is_ignored,
    make_inputs,
    max_error,
    reference_with_grads,
    run_with_grads,
)

from attnlab.backends import BACKENDS
from attnlab.reference import reference_core_attention

naive = BACKENDS["naive"]
EPS32 = torch.finfo(torch.float32).eps
#: float64 against float64: both round a few dozen operations per value (measured <= 25 ulps of the
#: magnitude on this CPU); 1e-12 (~4500 ulps) leaves room for other CPUs' summation orders and is still
#: 1e9 below the error of any wrong mask, scale or sink term.
REL64 = 1e-12
#: float32 against float64 on rows of <= 30 keys: measured <= 6.4 float32 ulps of the magnitude here; 64
#: ulps (7.6e-6) allow for CPUs whose matmul kernels accumulate in another order (AMD and Intel differ) and
#: stay 1e4 below a shifted mask's error (~1e-1 of the magnitude).
REL32 = 64 * EPS32


def slopes_for(h: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ALiBi paper's geometric slopes 2^(-8 i / h), i = 1..h."""
    return torch.tensor([2.0 ** (-8.0 * i / h) for i in range(1, h + 1)], dtype=dtype)


def sinks_for(h: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(h, generator=torch.Generator().manual_seed(h), dtype=torch.float64).add(1.0).to(dtype)


def assert_close_to_reference(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], rel: float) -> None:
    """Every quantity within ``rel`` of the call's magnitude (-inf lse rows must match exactly)."""
    finite = [torch.where(torch.isneginf(w), 0.0, w) for w in want]
    magnitude = max(w.abs().max().item() for w in finite if w.numel())
    for index, (g, w, f) in enumerate(zip(got, want, finite, strict=True)):
        assert g.shape == w.shape, index
        assert torch.equal(torch.isneginf(g).cpu(), torch.isneginf(w)), f"quantity {index}: -inf rows differ"
        err = max_error(torch.where(torch.isneginf(g), 0.0, g), f)
        assert err <= rel * magnitude, f"quantity {index}: error {err:.3g} > {rel:.2g} x magnitude {magnitude:.3g}"


CASES = [
    {},
    {"causal": False},
    {"h_kv": 2},
    {"h_kv": 1, "causal": False},
    {"window": 5},
    {"window": 1},
    {"softcap": 5.0},
    {"sinks": True},
    {"alibi": True},
    {"alibi": True, "causal": False},
    {"seq_lens": [7, 1, 22]},
    {"seq_lens": [7, 1, 22], "causal": False, "window": None},
    {"seq_lens": [7, 1, 22], "window": 3},
    {"return_lse": True},
    {"t_q": 40, "t_k": 25, "return_lse": True, "sinks": True},  # the first 15 queries see no key
    {"t_q": 5, "t_k": 30, "window": 4, "return_lse": True},  # decoding with a window
    {"h_kv": 2, "window": 4, "softcap": 3.0, "sinks": True, "alibi": True, "return_lse": True},
    {"kv_lens": (30, 5)},  # per-row key lengths (a right-padded batch, a KV cache's valid prefix)
    {"t_q": 1, "t_k": 30, "kv_lens": (9, 1), "causal": False, "alibi": True},
    # The second row has 2 keys for 4 queries: its first 2 see none.
    {
        "t_q": 4,
        "t_k": 30,
        "kv_lens": (30, 2),
        "h_kv": 2,
        "window": 4,
        "softcap": 3.0,
        "sinks": True,
        "alibi": True,
        "return_lse": True,
    },
]


def run_case(case: dict, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(naive's, the reference's) (out, dq, dk, dv[, dsinks][, lse]) for one case of CASES."""
    case = {key: value for key, value in case.items() if value is not None}
    h_kv, t_q = case.pop("h_kv", None), case.pop("t_q", 30)
    t_k = case.pop("t_k", t_q)
    q, k, v, dout = make_inputs(2, 4, t_q, t_k, 16, h_kv=h_kv, dtype=dtype, seed=t_q + t_k + (h_kv or 0))
    if case.pop("sinks", False):
        case["sinks"] = sinks_for(4, dtype)
    if case.pop("alibi", False):
        case["alibi_slopes"] = slopes_for(4, dtype)
    if "kv_lens" in case:
        case["kv_lens"] = torch.tensor(case["kv_lens"])
    causal = case.pop("causal", True)
    return run_with_grads(naive, q, k, v, dout, causal, **case), reference_with_grads(q, k, v, dout, causal, **case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_float64_matches_the_reference(case):
    got, want = run_case(case, torch.float64)
    assert_close_to_reference(got, want, REL64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_float32_matches_the_reference(case):
    got, want = run_case(case, torch.float32)
    assert got[0].dtype == torch.float32 and (not case.get("return_lse") or got[-1].dtype == torch.float32)
    assert_close_to_reference(got, want, REL32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_whose_scores_overflow_float16(dtype):
    q, k, v, _ = make_inputs(2, 4, 30, 30, 16, dtype=dtype, seed=1)
    q, k = ((x.float() * 400).to(dtype) for x in (q, k))
    scores = (q.float() @ k.float().transpose(-2, -1)) * 16**-0.5  # (2, 4, 30, 30)
    assert scores.abs().max() > 5 * torch.finfo(torch.float16).max  # float16 scores would be inf
    out, lse = naive(q, k, v, return_lse=True, sinks=sinks_for(4, dtype), softcap=None)
    want_out, want_lse = reference_core_attention(q, k, v, sinks=sinks_for(4, dtype))
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    # out is rounded to the input dtype once at the end: at most half an ulp of the input dtype (measured: 0).
    assert max_error(out, want_out) <= torch.finfo(dtype).eps * want_out.abs().max()
    # lse in float32 from float32 scores of size ~7e5: a few float32 ulps of its size (measured <= 0.93).
    assert max_error(lse, want_lse) <= 8 * EPS32 * want_lse.abs().max()


def test_dropout_drops_weights_with_torchs_generator():
    q, k, v, dout = make_inputs(2, 4, 30, 30, 16, seed=2)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    torch.manual_seed(123)
    out = naive(*leaves, dropout_p=0.25)
    torch.manual_seed(123)
    keep = F.dropout(torch.ones(2, 4, 30, 30), p=0.25)  # the same draw: 0 or 1 / (1 - p) per weight
    # The same computation by hand in float64: causal softmax weights, dropped and rescaled, times v.
    scores = (q.double() @ k.double().transpose(-2, -1)) * 16**-0.5  # (2, 4, 30, 30)
    future = torch.ones(30, 30, dtype=torch.bool).triu(1)  # (30, 30)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)  # (2, 4, 30, 30)
    expected = (weights * keep.double()) @ v.double()  # (2, 4, 30, 16)
    assert max_error(out, expected) <= REL32 * expected.abs().max()
    dropped = (keep == 0) & ~future
    assert 0.2 < dropped.sum() / (~future).sum().mul(8) < 0.3  # about p of the visible weights
    grads = torch.autograd.grad(out, leaves, dout)
    want = torch.autograd.grad(expected, leaves, dout.double())
    for got, ref in zip(grads, want, strict=True):
        assert max_error(got, ref) <= REL32 * ref.abs().max()
    # lse ignores dropout: the softmax's normaliser is computed before any weight is dropped.
    _, lse = naive(q, k, v, dropout_p=0.5, return_lse=True)
    assert max_error(lse, torch.logsumexp(scores.masked_fill(future, float("-inf")), dim=-1)) <= REL32 * lse.abs().max()
    with torch.no_grad():
        assert not torch.equal(naive(q, k, v, dropout_p=0.25), naive(q, k, v))


@pytest.mark.parametrize("options", [{"return_lse": True, "sinks": True}, {"causal": False, "alibi": True}])
def test_kv_lens_padding_is_ignored_and_rows_without_keys_are_zero(options):
    q, k, v, dout = make_inputs(3, 4, 3, 8, 16, h_kv=2, seed=21)
    options = dict(options)
    if options.pop("sinks", False):
        options["sinks"] = sinks_for(4, torch.float32)
    if options.pop("alibi", False):
        options["alibi_slopes"] = slopes_for(4, torch.float32)
    assert_kv_lens_padding_is_ignored(naive, q, k, v, dout, torch.tensor([8, 1, 5]), **options)
