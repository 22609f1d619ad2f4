"""flash_torch against the float64 reference: every feature alone and combined, shapes, empty rows, gradcheck,
the returned lse, and that windows and packing skip the tiles nobody sees.

Error bounds are FlashAttention's rule (see flash_reference.py): at most 2x the naive backend's error in the
same dtype for the output and lse, 3x for dq/dk/dv/dsinks, plus a floor scaled by the reference's magnitude.
Small blocks (16 to 64) make every case cross several blocks, with ragged last tiles.
"""

from __future__ import annotations

import pytest
import torch
from flash_reference import (
    assert_kv_lens_padding_is_ignored,
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.flash_torch import FEATURES, flash_torch_backward, flash_torch_forward, tile_plan
from attnlab.backends.spec import FEATURES as ALL_FEATURES

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
aten = torch.ops.aten


def flash(block_m: int = 32, block_n: int = 16):
    """flash_torch through the registry, with small blocks so every case crosses several of them."""

    def attend(q, k, v, **options):
        return BACKENDS["flash_torch"].attend(q, k, v, AttentionSpec(**options), block_m=block_m, block_n=block_n)

    return attend


def sinks_for(h: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sink logits (h,) around the scores' size, so that they take a visible share of each row."""
    return torch.randn(h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).add(1.0).to(dtype)


def alibi_slopes_for(h: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ALiBi paper's geometric slopes 2^(-8 i / h), i = 1..h."""
    return torch.tensor([2.0 ** (-8.0 * i / h) for i in range(1, h + 1)], dtype=dtype)


def check(
    *,
    b: int = 1,
    h: int = 4,
    h_kv: int | None = None,
    t_q: int = 70,
    t_k: int | None = None,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    input_scale: float = 1.0,
    blocks: tuple[int, int] = (32, 16),
    sinks: bool = False,
    alibi: bool = False,
    seed: int = 0,
    **options,
) -> None:
    """FlashAttention's rule for flash_torch on random inputs of this shape with these options."""
    q, k, v, dout = make_inputs(
        b, h, t_q, t_q if t_k is None else t_k, head_dim, h_kv=h_kv, dtype=dtype, scale=input_scale, seed=seed
    )
    if sinks:
        options["sinks"] = sinks_for(h, seed)
    if alibi:
        options["alibi_slopes"] = alibi_slopes_for(h)
    assert_matches_reference(flash(*blocks), q, k, v, dout, **options)


# -- shapes (no optional feature) ------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 17, 97, 150])
def test_sequence_lengths(t, causal):
    q, k, v, dout = make_inputs(2, 2, t, t, 32, seed=t)
    assert_matches_reference(flash(), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("t_q", "t_k"), [(1, 239), (3, 799), (127, 513), (300, 299), (239, 1), (799, 3), (513, 127), (299, 300)]
)
def test_unequal_lengths(t_q, t_k, causal):
    q, k, v, dout = make_inputs(1, 2, t_q, t_k, 16, seed=t_q + t_k)
    assert_matches_reference(flash(128, 64), q, k, v, dout, causal=causal)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    q, k, v, dout = make_inputs(1, 3, 70, 90, 32, dtype=dtype, seed=1)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_with_every_feature(dtype):
    check(h=4, h_kv=2, dtype=dtype, window=20, softcap=30.0, sinks=True, alibi=True, return_lse=True, seed=2)


def test_inputs_scaled_by_five_stay_finite():
    # Scores up to ~25x larger: exp would overflow without the running max.
    q, k, v, dout = make_inputs(1, 2, 150, 150, 32, scale=5.0, seed=5)
    assert_matches_reference(flash(), q, k, v, dout, causal=True)


def test_non_contiguous_inputs_and_output_gradient():
    q, k, v, dout = make_inputs(2, 3, 45, 61, 16, contiguous=False, seed=6)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    assert_matches_reference(flash(), q, k, v, dout, causal=True)
    q, k, v, dout = make_inputs(2, 6, 45, 45, 16, h_kv=2, contiguous=False, seed=6)
    assert_matches_reference(flash(), q, k, v, dout, causal=True, window=9, sinks=sinks_for(6))


def test_empty_batch():
    q, k, v, dout = make_inputs(0, 2, 9, 9, 16)
    out, dq, dk, dv = run_with_grads(flash(), q, k, v, dout, causal=True)
    assert out.shape == (0, 2, 9, 16) and dq.shape == q.shape and dk.shape == dv.shape == k.shape
    q, k, v, dout = make_inputs(0, 4, 9, 9, 16, h_kv=2)
    out, dq, dk, dv, dsinks, lse = run_with_grads(flash(), q, k, v, dout, sinks=sinks_for(4), return_lse=True)
    assert out.shape == (0, 4, 9, 16) and lse.shape == (0, 4, 9) and torch.equal(dsinks, torch.zeros(4))


def test_forward_is_bitwise_repeatable():
    q, k, v, _ = make_inputs(2, 2, 100, 100, 32, seed=7)
    first = BACKENDS["flash_torch"](q, k, v)
    assert all(torch.equal(first, BACKENDS["flash_torch"](q, k, v)) for _ in range(2))


# -- every feature alone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"h": 6, "h_kv": 2},
        {"window": 9},
        {"softcap": 30.0, "input_scale": 5.0},
        {"sinks": True},
        {"alibi": True},
        {"alibi": True, "causal": False},
        {"seq_lens": [5, 30, 1, 34]},
        {"seq_lens": [5, 30, 1, 34], "causal": False},
        {"return_lse": True},
        {"return_lse": True, "causal": False},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_one_feature(options):
    check(**options)


# -- combinations ----------------------------------------------------------------------------------------


def test_gqa_window_softcap_sinks():
    check(b=2, h=6, h_kv=2, window=7, softcap=30.0, sinks=True, input_scale=2.0, return_lse=True)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_sequences(causal):
    check(h=4, h_kv=1, seq_lens=[1, 17, 3, 49], causal=causal, sinks=True, return_lse=True)


def test_packed_with_window():
    check(seq_lens=[1, 17, 3, 49], window=5, h=4, h_kv=2, softcap=30.0, alibi=True)


def test_packed_lengths_1_17_128_300():
    check(h=2, t_q=446, seq_lens=[1, 17, 128, 300], blocks=(64, 32))


@pytest.mark.parametrize(("t_q", "t_k"), [(1, 100), (5, 100), (64, 100), (100, 64)])
@pytest.mark.parametrize("window", [1, 3, 40])
def test_window_with_unequal_lengths(t_q, t_k, window):
    # Decoding: the queries are the last t_q positions, each sees its window of the cached keys.
    check(t_q=t_q, t_k=t_k, window=window, h=4, h_kv=2, sinks=True, return_lse=True)


@pytest.mark.parametrize("window", [1, 3, 64, 500])
def test_window_sizes(window):
    # 500 > t: the window changes nothing; 1: each query sees only itself.
    check(t_q=150, window=window, blocks=(32, 32))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("h", "h_kv"), [(4, 4), (8, 1)])
def test_alibi_with_and_without_gqa(h, h_kv, causal):
    check(h=h, h_kv=h_kv, alibi=True, causal=causal)


@pytest.mark.parametrize(("h", "h_kv"), [(6, 2), (8, 1), (4, 4)])
def test_gqa_ratios(h, h_kv):
    check(h=h, h_kv=h_kv, window=20, sinks=True, seed=h * 10 + h_kv)


@pytest.mark.parametrize("softcap", [30.0, 50.0])
def test_softcap_on_large_scores(softcap):
    # Inputs x5: raw scores reach ~100, beyond the cap; tanh saturates (its gradient ~0) without NaN.
    check(softcap=softcap, input_scale=5.0, h=4, h_kv=2, sinks=True)


# One combination per head dim (the odd ones exercise any width, not just powers of two).
HEAD_DIM_CASES = [
    (16, {"h": 4, "h_kv": 2, "window": 5}),
    (32, {"softcap": 30.0, "sinks": True}),
    (40, {"alibi": True, "causal": False}),
    (59, {"seq_lens": [10, 25, 5]}),
    (64, {"h": 6, "h_kv": 2, "sinks": True, "return_lse": True}),
    (80, {"h": 4, "h_kv": 1, "alibi": True, "window": 12}),
    (96, {"seq_lens": [17, 23], "causal": False, "softcap": 50.0}),
    (111, {"window": 30, "sinks": True, "return_lse": True}),
    (128, {"h": 8, "h_kv": 2, "softcap": 30.0, "alibi": True, "sinks": True}),
]


@pytest.mark.parametrize(("head_dim", "options"), HEAD_DIM_CASES, ids=[str(d) for d, _ in HEAD_DIM_CASES])
def test_head_dims(head_dim, options):
    check(t_q=40, head_dim=head_dim, blocks=(16, 16), seed=head_dim, **options)


# -- rows that see no key, and the returned lse ----------------------------------------------------------


def test_rows_without_keys_are_zero_with_zero_finite_gradients():
    # t_q = 40 > t_k = 25: bottom-right alignment leaves the first 15 queries with no visible key.
    q, k, v, dout = make_inputs(2, 2, 40, 25, 16, seed=3)
    assert_rows_without_keys_are_zero(flash(16, 8), q, k, v, dout)


def test_rows_without_keys_with_every_feature():
    q, k, v, dout = make_inputs(2, 4, 40, 25, 16, h_kv=2, seed=4)
    options = dict(window=6, softcap=30.0, sinks=sinks_for(4), alibi_slopes=alibi_slopes_for(4), return_lse=True)
    assert_rows_without_keys_are_zero(flash(16, 8), q, k, v, dout, **options)
    assert_matches_reference(flash(16, 8), q, k, v, dout, **options)


def visible_scores(q: torch.Tensor, k: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """Scores (b, h, t_q, t_k), -inf where hidden, written from spec.py's sentences, one (i, j) at a time."""
    _, h, t_q, head_dim = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    keys = k[:, [i // (h // h_kv) for i in range(h)]]  # (b, h, t_k, d): query head i uses key head i // group
    scores = q @ keys.transpose(-2, -1) * head_dim**-0.5  # (b, h, t_q, t_k)
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    seq_of = [s for s, n in enumerate(spec.seq_lens or [t_k]) for _ in range(n)]  # token -> its sequence
    for i in range(t_q):
        p = i + t_k - t_q  # bottom-right position
        for j in range(t_k):
            if spec.alibi_slopes is not None:
                scores[:, :, i, j] -= spec.alibi_slopes * abs(p - j)
            hidden = (spec.causal and j > p) or (spec.window is not None and j <= p - spec.window)
            if hidden or (spec.seq_lens is not None and seq_of[i] != seq_of[j]):
                scores[:, :, i, j] = float("-inf")
    return scores


@pytest.mark.parametrize(
    ("t_q", "t_k", "options"),
    [
        (20, 20, {}),
        (20, 20, {"causal": False}),
        (9, 20, {"window": 4}),
        (20, 12, {"window": 4}),  # the first 8 queries see no key: lse -inf
        (20, 20, {"seq_lens": [3, 1, 16], "causal": False}),
        (20, 20, {"seq_lens": [3, 1, 16], "window": 2}),
    ],
)
def test_returned_lse_is_logsumexp_of_the_visible_scores(t_q, t_k, options):
    q, k, v, _ = make_inputs(1, 4, t_q, t_k, 8, h_kv=2, dtype=torch.float64, seed=t_q + t_k)
    spec = AttentionSpec(
        softcap=3.0, alibi_slopes=alibi_slopes_for(4, torch.float64), sinks=sinks_for(4, dtype=torch.float64),
        return_lse=True, **options,
    )  # fmt: skip
    _, lse = BACKENDS["flash_torch"].attend(q, k, v, spec, block_m=4, block_n=8)
    expected = torch.logsumexp(visible_scores(q, k, spec), dim=-1)  # (1, 4, t_q), the sink excluded
    assert lse.dtype == torch.float64 and lse.shape == expected.shape
    assert torch.equal(torch.isneginf(lse), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    # float64 end to end: both sides round a few dozen operations (~1e-15 relative); a wrong mask, scale or
    # sink handling moves lse by >= 1e-3 of its size.
    assert (lse[finite] - expected[finite]).abs().max() <= 1e-12 * expected[finite].abs().max()
    # float32 inputs: lse comes back in float32
    _, lse32 = BACKENDS["flash_torch"](q.float(), k.float(), v.float(), return_lse=True)
    assert lse32.dtype == torch.float32


def test_saved_log_sum_exp_is_plus_infinity_for_rows_without_keys():
    # The standalone forward returns the lse it saves for the backward: +inf on rows without keys.
    q, k, v, _ = make_inputs(1, 1, 6, 4, 8, dtype=torch.float64, seed=8)
    _, lse = flash_torch_forward(q, k, v, AttentionSpec(), block_m=4, block_n=2)
    _, returned = BACKENDS["flash_torch"](q, k, v, return_lse=True)
    assert torch.equal(lse[..., :2], torch.full_like(lse[..., :2], float("inf")))
    assert torch.equal(returned[..., :2], torch.full_like(lse[..., :2], float("-inf")))
    assert torch.equal(lse[..., 2:], returned[..., 2:])


def test_standalone_backward_matches_autograd():
    q, k, v, dout = make_inputs(1, 4, 30, 30, 8, h_kv=2, dtype=torch.float64, seed=9)
    spec = AttentionSpec(window=7, sinks=sinks_for(4, dtype=torch.float64))
    out, lse = flash_torch_forward(q, k, v, spec, block_m=8, block_n=8)
    dq, dk, dv, dsinks = flash_torch_backward(dout, q, k, v, out, lse, spec, block_m=8, block_n=8)
    expected = run_with_grads(flash(8, 8), q, k, v, dout, window=7, sinks=spec.sinks)
    for got, want in zip((out, dq, dk, dv, dsinks), expected, strict=True):
        # same float64 arithmetic in the same order: equal to rounding (1e-12 of the magnitude)
        assert (got - want).abs().max() <= 1e-12 * want.abs().max()


# -- gradcheck (float64, tiny) ---------------------------------------------------------------------------

GRADCHECK_CASES = [
    {},
    {"causal": False},
    {"t_q": 7, "t_k": 4},  # rows without keys
    {"h": 4, "h_kv": 2},
    {"window": 2},
    {"window": 2, "t_q": 3, "t_k": 7},
    {"softcap": 0.5},
    {"sinks": True},
    {"sinks": True, "t_q": 7, "t_k": 4},
    {"alibi": True},
    {"alibi": True, "causal": False},
    {"seq_lens": [2, 1, 3]},
    {"seq_lens": [2, 1, 3], "causal": False},
    {"return_lse": True},
    {"return_lse": True, "sinks": True, "t_q": 7, "t_k": 4},
    {"h": 4, "h_kv": 2, "window": 3, "softcap": 1.0, "sinks": True, "alibi": True, "return_lse": True},
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_gradcheck_float64(case):
    case = dict(case)
    h, h_kv = case.pop("h", 2), case.pop("h_kv", None)
    t_q = case.pop("t_q", 6)
    t_k = case.pop("t_k", t_q)
    q, k, v, _ = make_inputs(1, h, t_q, t_k, 4, h_kv=h_kv, dtype=torch.float64, seed=t_q * t_k + h)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    if case.pop("sinks", False):
        leaves.append(sinks_for(h, dtype=torch.float64).requires_grad_())
    if case.pop("alibi", False):
        case["alibi_slopes"] = alibi_slopes_for(h, torch.float64)
    with_sinks = len(leaves) == 4

    def fn(*tensors):
        sinks = {"sinks": tensors[3]} if with_sinks else {}
        result = flash(2, 3)(*tensors[:3], **case, **sinks)
        if not case.get("return_lse"):
            return result
        out, lse = result
        return out, torch.where(torch.isinf(lse), 0.0, lse)  # rows without keys: -inf, nothing to check

    assert torch.autograd.gradcheck(fn, tuple(leaves))


# -- tiles outside the window or across sequences are skipped -------------------------------------------


class MatmulWork(TorchDispatchMode):
    """Counts the multiply-adds of every batched matmul (bmm, baddbmm, in place or not) run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.bmm, aten.baddbmm, aten.baddbmm_):
            a, b = args[:2] if packet is aten.bmm else args[1:3]
            self.macs += a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return func(*args, **(kwargs or {}))


def planned_macs(spec: AttentionSpec, b: int, h: int, t: int, head_dim: int, block: int) -> int:
    """Multiply-adds of one forward's matmuls per the tile plan: scores and P.V, per visited tile and head."""
    plan = tile_plan(t, t, spec, block, block)
    per_head = 0  # query rows x keys of every visited tile
    for m, (unmasked, masked) in enumerate(zip(plan.unmasked, plan.masked, strict=True)):
        per_head += sum(min(block, t - m * block) * min(block, t - j0) for j0 in unmasked + masked)
    return 2 * b * h * per_head * head_dim


def forward_and_backward_macs(t: int, block: int = 16, backward: bool = True, **options) -> tuple[int, int]:
    """Multiply-adds counted in flash_torch's forward and backward (0 without ``backward``) at length t."""
    q, k, v, dout = make_inputs(1, 2, t, t, 8, seed=t)
    leaves = [x.requires_grad_(backward) for x in (q, k, v)]
    with MatmulWork() as forward:
        out = flash(block, block)(*leaves, **options)
    with MatmulWork() as back:
        if backward:
            out.backward(dout)
    return forward.macs, back.macs


def test_tile_plan_of_a_window():
    # Blocks of 32, window 32: query block m sees keys [32m - 31, 32m + 31], tiles m-1 and m, both partly.
    plan = tile_plan(256, 256, AttentionSpec(window=32), 32, 32)
    assert plan.unmasked == ((),) * 8 and plan.masked == ((0,), *((32 * m - 32, 32 * m) for m in range(1, 8)))
    # Window 64: every row of block m >= 2 sees all of tile m-1, and tiles m-2 and m in part.
    plan = tile_plan(256, 256, AttentionSpec(window=64), 32, 32)
    assert plan.unmasked[2:] == tuple((32 * m - 32,) for m in range(2, 8))
    assert plan.masked[2:] == tuple((32 * m - 64, 32 * m) for m in range(2, 8))
    assert plan.num_tiles() == (7, 14)
    # Seen from the keys (the dkdv pass): tile n is unmasked for block n+1, masked for blocks n and n+2.
    assert plan.unmasked_blocks[3] == (4,) and plan.masked_blocks[3] == (3, 5)


def test_tile_plan_of_packed_sequences():
    # Two sequences of 64 in blocks of 32: no tile crosses into the other sequence.
    plan = tile_plan(128, 128, AttentionSpec(seq_lens=[64, 64], causal=False), 32, 32)
    assert plan.unmasked == ((0, 32), (0, 32), (64, 96), (64, 96)) and plan.masked == ((),) * 4


@pytest.mark.parametrize(
    "options", [{}, {"window": 10}, {"seq_lens": [25, 15, 40, 20]}, {"seq_lens": [49, 51], "causal": False}]
)
def test_forward_and_backward_do_exactly_the_planned_work(options):
    forward, backward = forward_and_backward_macs(100, **options)
    expected = planned_macs(AttentionSpec(**options), 1, 2, 100, 8, 16)
    # forward: scores and P.V per tile; backward: scores, dP, dV, dK and dQ per tile
    assert forward == expected and backward == expected * 5 // 2


def test_window_work_grows_linearly_with_length():
    causal = [forward_and_backward_macs(t, backward=False)[0] for t in (128, 256)]
    window = [forward_and_backward_macs(t, backward=False, window=16)[0] for t in (128, 256)]
    assert causal[1] / causal[0] > 3.5  # t^2 (36 -> 136 tiles)
    assert window[1] / window[0] < 2.2  # t * w (15 -> 31 tiles)


def test_packed_work_grows_with_the_sum_of_squared_lengths():
    packed = [forward_and_backward_macs(t, backward=False, seq_lens=[32] * (t // 32))[0] for t in (128, 256)]
    assert packed[1] / packed[0] < 2.2  # sum t_i^2 = 32 t
    assert packed[0] == forward_and_backward_macs(32, backward=False)[0] * 4  # each costs what it costs alone


# -- refusals --------------------------------------------------------------------------------------------


def test_features_are_declared():
    assert FEATURES == set(ALL_FEATURES) - {"dropout"}


def test_refusals():
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="does not support dropout"):
        BACKENDS["flash_torch"](q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="flash_torch does not support dropout"):
        flash_torch_forward(q, k, v, AttentionSpec(dropout_p=0.1))
    with pytest.raises(ValueError, match="block_m must be a positive integer, got 0"):
        flash(0, 3)(q, k, v)
    with pytest.raises(ValueError, match="must agree in batch and head_dim"):
        BACKENDS["flash_torch"](q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match="no gradient for alibi_slopes"):
        BACKENDS["flash_torch"](q, k, v, alibi_slopes=alibi_slopes_for(2).requires_grad_())
    with torch.no_grad():  # no gradient asked for: fine
        BACKENDS["flash_torch"](q, k, v, alibi_slopes=alibi_slopes_for(2).requires_grad_())
    out, lse = flash_torch_forward(q, k, v, AttentionSpec())
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 2, 4, 8\), got \(1, 2, 4, 4\)"):
        flash_torch_backward(out[..., :4], q, k, v, out, lse, AttentionSpec())


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("t_q", "t_k"), [(97, 97), (127, 513), (513, 127)])
def test_cuda(t_q, t_k, dtype):
    q, k, v, dout = make_inputs(2, 4, t_q, t_k, 64, h_kv=2, dtype=dtype, device="cuda", seed=t_q)
    options = dict(window=50, softcap=30.0, return_lse=True, sinks=sinks_for(4).cuda())
    assert_matches_reference(flash(64, 64), q, k, v, dout, causal=True)
    assert_matches_reference(flash(64, 64), q, k, v, dout, causal=True, **options)


def test_default_block_sizes_run_every_feature():
    # The registry's defaults (256 for few heads): one tile covers everything, the plan still applies.
    q, k, v, dout = make_inputs(1, 4, 300, 300, 16, h_kv=2, seed=10)
    options = dict(window=100, softcap=30.0, sinks=sinks_for(4), alibi_slopes=alibi_slopes_for(4), return_lse=True)
    assert_matches_reference(BACKENDS["flash_torch"], q, k, v, dout, **options)


# -- per-row key lengths (kv_lens) ------------------------------------------------------------------------

#: Ragged rows: all keys, one key, and fewer keys than queries when t_q > 2 (those queries see none).
KV_LENS = (60, 1, 2, 37)


@pytest.mark.parametrize("t_q", [1, 5])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": False},
        {"h": 6, "h_kv": 2, "window": 7, "softcap": 3.0, "sinks": True, "alibi": True, "return_lse": True},
        {"h": 4, "h_kv": 1, "causal": False, "alibi": True, "sinks": True, "return_lse": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain",
)
def test_kv_lens(t_q, options):
    check(b=4, t_q=t_q, t_k=60, blocks=(4, 16), kv_lens=torch.tensor(KV_LENS), **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_kv_lens_other_dtypes(dtype):
    check(b=4, t_q=5, t_k=60, dtype=dtype, blocks=(4, 16), kv_lens=torch.tensor(KV_LENS), window=9, sinks=True)


@pytest.mark.parametrize("options", [{"return_lse": True, "window": 3}, {"causal": False}])
def test_kv_lens_padding_is_ignored_and_rows_without_keys_are_zero(options):
    q, k, v, dout = make_inputs(4, 4, 5, 60, 16, h_kv=2, seed=3)
    options = {"sinks": sinks_for(4), "alibi_slopes": alibi_slopes_for(4), **options}
    assert_kv_lens_padding_is_ignored(flash(4, 16), q, k, v, dout, torch.tensor(KV_LENS), **options)


def test_tile_plan_of_kv_lens_is_per_batch_row():
    # Row 0 has all 64 keys: its 4 queries sit at 60..63. Row 1 has 20: they sit at 16..19, so tiles past the
    # first two of 16 keys are never visited (and its dk, dv there stay zero).
    spec = AttentionSpec(kv_lens=torch.tensor([64, 20]))
    full, short = (tile_plan(4, 64, spec, 4, 16, batch_row=r) for r in (0, 1))
    assert full.unmasked == ((0, 16, 32),) and full.masked == ((48,),)
    assert short.unmasked == ((0,),) and short.masked == ((16,),)
    assert short.unmasked_blocks == ((0,), (), (), ()) and short.masked_blocks == ((), (0,), (), ())
    with pytest.raises(ValueError, match="tile_plan with kv_lens needs batch_row"):
        tile_plan(4, 64, spec, 4, 16)
