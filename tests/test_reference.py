"""The float64 reference, checked against facts that do not come from itself.

Three kinds of evidence: tiny cases whose numbers are worked out by hand below (with ``math``), invariants
(a window as long as the sequence changes nothing, packed sequences equal separate runs, GQA equals repeated
key/value heads, ...), and agreement with a second, vectorised formulation written here with explicit boolean
masks (``masked_attention``) and with the ``naive`` backend.

Tolerance: every comparison is float64 against float64 over at most a dozen keys, so the only difference is
the order of roundings, about 1e-16 relative; ``close`` allows 1e-12 of the largest expected magnitude, four
orders of headroom, while a wrong mask, scale, bias or head mapping changes results by 1e-2 or more.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab import BACKENDS, AttentionWeights
from attnlab.reference import reference_attention, reference_core_attention

E = math.e


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-12) -> bool:
    """|actual - expected| <= rel * max(1, max |expected|), elementwise over finite entries; -inf must match."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape or not torch.equal(torch.isinf(actual), torch.isinf(expected)):
        return False
    finite = torch.isfinite(expected)
    if not finite.any():
        return True
    limit = rel * max(1.0, expected[finite].abs().max().item())
    return (actual[finite] - expected[finite]).abs().max().item() <= limit


def column(*values: float) -> torch.Tensor:
    """A (1, 1, t, 1) float64 tensor: one batch, one head, head_dim 1 (so the default scale is 1)."""
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, len(values), 1)  # (1, 1, t, 1)


def f64(*values: float) -> torch.Tensor:
    """A 1-D float64 tensor (``torch.tensor`` of Python floats would round them to float32)."""
    return torch.tensor(values, dtype=torch.float64)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def qkv(b: int, h: int, h_kv: int, t_q: int, t_k: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    return [
        randn(b, h, t_q, d, seed=seed),  # q (b, h, t_q, d)
        randn(b, h_kv, t_k, d, seed=seed + 1),  # k (b, h_kv, t_k, d)
        randn(b, h_kv, t_k, d, seed=seed + 2),  # v (b, h_kv, t_k, d)
    ]


# -- hand-computed cases ----------------------------------------------------------------------------------------
# q = (1, 2), k = (1, 0), v = (3, 5), head_dim 1: the logits are q_i * k_j, so row 0 sees (1) causally and
# (1, 0) non-causally, row 1 sees (2, 0).
Q2, K2, V2 = column(1.0, 2.0), column(1.0, 0.0), column(3.0, 5.0)


def test_hand_causal():
    out, lse = reference_core_attention(Q2, K2, V2)
    assert close(out.flatten(), f64(3.0, (E**2 * 3 + 5) / (E**2 + 1)))
    assert close(lse.flatten(), f64(1.0, math.log(E**2 + 1)))


def test_hand_non_causal():
    out, lse = reference_core_attention(Q2, K2, V2, causal=False)
    assert close(out.flatten(), f64((E * 3 + 5) / (E + 1), (E**2 * 3 + 5) / (E**2 + 1)))
    assert close(lse.flatten(), f64(math.log(E + 1), math.log(E**2 + 1)))


def test_hand_scale():
    out, lse = reference_core_attention(Q2, K2, V2, scale=2.0)  # logits of row 1: (4, 0)
    assert close(out.flatten(), f64(3.0, (E**4 * 3 + 5) / (E**4 + 1)))
    assert close(lse.flatten(), f64(2.0, math.log(E**4 + 1)))


def test_hand_softcap():
    c = 1.5  # logits become c * tanh(logit / c)
    s00, s10 = c * math.tanh(1 / c), c * math.tanh(2 / c)
    out, lse = reference_core_attention(Q2, K2, V2, softcap=c)
    assert close(out.flatten(), f64(3.0, (math.exp(s10) * 3 + 5) / (math.exp(s10) + 1)))
    assert close(lse.flatten(), f64(s00, math.log(math.exp(s10) + 1)))


def test_hand_sink():
    sink = 0.5  # joins the denominator only; the lse leaves it out
    out, lse = reference_core_attention(Q2, K2, V2, sinks=torch.tensor([sink], dtype=torch.float64))
    expected = [E * 3 / (E + math.exp(sink)), (E**2 * 3 + 5) / (E**2 + 1 + math.exp(sink))]
    assert close(out.flatten(), f64(*expected))
    assert close(lse.flatten(), f64(1.0, math.log(E**2 + 1)))


def test_hand_sink_is_not_softcapped_scaled_or_biased():
    sink, c = 2.5, 1.0  # a softcapped sink would be tanh(2.5) < 1; it must stay 2.5
    slopes = torch.tensor([0.5], dtype=torch.float64)
    out, _ = reference_core_attention(
        Q2, K2, V2, scale=2.0, softcap=c, alibi_slopes=slopes, sinks=torch.tensor([sink], dtype=torch.float64)
    )
    s00 = c * math.tanh(2.0 / c)  # row 0: scale 2, softcap 1, distance 0
    assert close(out[0, 0, 0, 0], f64(math.exp(s00) * 3 / (math.exp(s00) + math.exp(sink)))[0])


def test_hand_alibi_causal_and_non_causal():
    slopes = torch.tensor([0.5], dtype=torch.float64)  # logit -= 0.5 * |p_i - j|
    out, lse = reference_core_attention(Q2, K2, V2, alibi_slopes=slopes)  # row 1: (2 - 0.5, 0 - 0)
    assert close(out.flatten(), f64(3.0, (E**1.5 * 3 + 5) / (E**1.5 + 1)))
    assert close(lse.flatten(), f64(1.0, math.log(E**1.5 + 1)))
    out, _ = reference_core_attention(Q2, K2, V2, causal=False, alibi_slopes=slopes)  # row 0: (1 - 0, 0 - 0.5)
    assert close(out[0, 0, 0, 0], f64((E * 3 + E**-0.5 * 5) / (E + E**-0.5))[0])


def test_hand_fewer_queries_than_keys_sees_every_key():
    # One query, three keys: it sits at position 2, so it sees keys 0, 1, 2 with logits (1, 0, -1).
    out, lse = reference_core_attention(column(1.0), column(1.0, 0.0, -1.0), column(3.0, 5.0, 7.0))
    assert close(out.flatten(), f64((3 * E + 5 + 7 / E) / (E + 1 + 1 / E)))
    assert close(lse.flatten(), f64(math.log(E + 1 + 1 / E)))


def test_hand_more_queries_than_keys_leaves_early_rows_empty():
    # Three queries, one key: queries 0 and 1 sit at positions -2 and -1 and see nothing.
    out, lse = reference_core_attention(column(1.0, 2.0, 3.0), column(1.0), column(4.0))
    assert torch.equal(out.flatten(), torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64))
    assert torch.equal(lse.flatten(), torch.tensor([-math.inf, -math.inf, 3.0], dtype=torch.float64))


def test_hand_window():
    # window=2: query 2 sees keys 1 and 2 (logits 0, -1), query 0 only key 0.
    q, k, v = column(1.0, 1.0, 1.0), column(1.0, 0.0, -1.0), column(3.0, 5.0, 7.0)
    out, lse = reference_core_attention(q, k, v, window=2)
    expected = [3.0, (3 * E + 5) / (E + 1), (5 + 7 / E) / (1 + 1 / E)]
    assert close(out.flatten(), f64(*expected))
    assert close(lse.flatten(), f64(1.0, math.log(E + 1), math.log(1 + 1 / E)))


def test_hand_packed_sequences():
    # seq_lens (1, 2): token 0 alone; tokens 1 and 2 form a second sequence that never sees token 0.
    q, k, v = column(1.0, 1.0, 1.0), column(1.0, 0.0, -1.0), column(3.0, 5.0, 7.0)
    out, _ = reference_core_attention(q, k, v, seq_lens=[1, 2])
    assert close(out.flatten(), f64(3.0, 5.0, (5 + 7 / E) / (1 + 1 / E)))
    out, _ = reference_core_attention(q, k, v, causal=False, seq_lens=[1, 2])
    assert close(out.flatten(), f64(3.0, (5 + 7 / E) / (1 + 1 / E), (5 + 7 / E) / (1 + 1 / E)))


# -- a second formulation: vectorised, with explicit boolean masks ------------------------------------------------


def masked_attention(
    q, k, v, *, causal=True, scale=None, window=None, softcap=None, sinks=None, alibi_slopes=None, seq_lens=None
):
    """The semantics again, as whole-matrix operations with a boolean mask and ``torch.softmax``."""
    q, k, v = (t.double() for t in (q, k, v))
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // h_kv, dim=1)  # (b, h, t_k, d)
    v = v.repeat_interleave(h // h_kv, dim=1)  # (b, h, t_k, d)
    s = q @ k.transpose(-2, -1) * (d**-0.5 if scale is None else scale)  # (b, h, t_q, t_k)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    pos_q = torch.arange(t_q)[:, None] + (t_k - t_q)  # (t_q, 1)
    pos_k = torch.arange(t_k)[None, :]  # (1, t_k)
    if alibi_slopes is not None:
        s = s - alibi_slopes.double()[:, None, None] * (pos_q - pos_k).abs()  # (b, h, t_q, t_k)
    visible = torch.ones(t_q, t_k, dtype=torch.bool)  # (t_q, t_k)
    if causal:
        visible &= pos_k <= pos_q
    if window is not None:
        visible &= pos_k > pos_q - window
    if seq_lens is not None:
        seq_id = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.as_tensor(seq_lens))  # (t,)
        visible &= seq_id[:, None] == seq_id[None, :]
    s = s.masked_fill(~visible, -math.inf)  # (b, h, t_q, t_k)
    lse = torch.logsumexp(s, dim=-1)  # (b, h, t_q)
    if sinks is not None:
        sink_column = sinks.double()[None, :, None, None].expand(b, h, t_q, 1)  # (b, h, t_q, 1)
        s = torch.cat([s, sink_column], dim=-1)  # (b, h, t_q, t_k + 1)
    p = torch.softmax(s, dim=-1)[..., :t_k]  # (b, h, t_q, t_k)
    p = torch.where(visible.any(dim=-1)[:, None], p, 0.0)  # rows without keys: zeros, not NaN
    return p @ v, lse


SLOPES = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
SINKS = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64)
OPTION_SETS = [
    {},
    {"causal": False},
    {"scale": 0.3},
    {"window": 1},
    {"window": 3},
    {"softcap": 0.8},
    {"alibi_slopes": SLOPES},
    {"causal": False, "alibi_slopes": SLOPES},
    {"sinks": SINKS},
    {"seq_lens": [2, 4, 1]},
    {"causal": False, "seq_lens": [3, 4]},
    {"window": 2, "softcap": 1.2, "alibi_slopes": SLOPES, "sinks": SINKS, "seq_lens": [5, 2]},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("h_kv", [4, 2, 1])
def test_matches_the_masked_formulation(options, h_kv):
    q, k, v = qkv(2, 4, h_kv, 7, 7, 3, seed=h_kv)
    out, lse = reference_core_attention(q, k, v, **options)
    want_out, want_lse = masked_attention(q, k, v, **options)
    assert close(out, want_out) and close(lse, want_lse)


@pytest.mark.parametrize("t_q, t_k", [(3, 6), (6, 3), (1, 5)])
@pytest.mark.parametrize("options", [{}, {"window": 2, "alibi_slopes": SLOPES, "sinks": SINKS}, {"causal": False}])
def test_matches_the_masked_formulation_with_unequal_lengths(t_q, t_k, options):
    q, k, v = qkv(1, 4, 2, t_q, t_k, 2, seed=t_q)
    out, lse = reference_core_attention(q, k, v, **options)
    want_out, want_lse = masked_attention(q, k, v, **options)
    assert close(out, want_out) and close(lse, want_lse)


@pytest.mark.parametrize("t_q, t_k", [(6, 6), (4, 9), (9, 4)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_matches_the_naive_backend(t_q, t_k, causal, scale):
    q, k, v = qkv(2, 3, 3, t_q, t_k, 4, seed=t_q + t_k)
    out, _ = reference_core_attention(q, k, v, causal=causal, scale=scale)
    assert close(out, BACKENDS["naive"](q, k, v, causal=causal, scale=scale))


# -- invariants --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [6, 7, 50])
def test_a_window_as_long_as_the_sequence_is_plain_causal(window):
    q, k, v = qkv(1, 2, 2, 6, 6, 3)
    plain = reference_core_attention(q, k, v)
    windowed = reference_core_attention(q, k, v, window=window)
    assert close(windowed[0], plain[0]) and close(windowed[1], plain[1])


def test_a_shorter_window_changes_the_result():
    q, k, v = qkv(1, 2, 2, 6, 6, 3)
    assert not close(reference_core_attention(q, k, v, window=5)[0], reference_core_attention(q, k, v)[0])


@pytest.mark.parametrize("seq_lens", [[6], (6,), torch.tensor([6]), torch.tensor([6], dtype=torch.int32)])
@pytest.mark.parametrize("causal", [True, False])
def test_one_packed_sequence_is_plain(seq_lens, causal):
    q, k, v = qkv(2, 2, 1, 6, 6, 3)
    plain = reference_core_attention(q, k, v, causal=causal)
    packed = reference_core_attention(q, k, v, causal=causal, seq_lens=seq_lens)
    assert close(packed[0], plain[0]) and close(packed[1], plain[1])


@pytest.mark.parametrize(
    "options",
    [{}, {"causal": False}, {"window": 2}, {"softcap": 0.9}, {"alibi_slopes": SLOPES}, {"sinks": SINKS}],
    ids=lambda o: ",".join(o) or "plain",
)
def test_packed_sequences_equal_running_each_alone(options):
    q, k, v = qkv(2, 4, 2, 7, 7, 3)
    out, lse = reference_core_attention(q, k, v, seq_lens=[3, 1, 3], **options)
    for start, stop in [(0, 3), (3, 4), (4, 7)]:
        alone_out, alone_lse = reference_core_attention(
            q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], **options
        )
        assert close(out[:, :, start:stop], alone_out) and close(lse[:, :, start:stop], alone_lse)


@pytest.mark.parametrize("h, h_kv", [(4, 2), (6, 3), (4, 1)])
def test_grouped_query_attention_equals_repeated_kv_heads(h, h_kv):
    q, k, v = qkv(2, h, h_kv, 5, 5, 3)
    options = {"window": 3, "sinks": torch.linspace(-1, 1, h, dtype=torch.float64)}
    grouped = reference_core_attention(q, k, v, **options)
    # Hugging Face's repeat_kv order: query head i reads kv head i // (h // h_kv).
    k_rep, v_rep = (t.repeat_interleave(h // h_kv, dim=1) for t in (k, v))  # (b, h, t, d)
    repeated = reference_core_attention(q, k_rep, v_rep, **options)
    assert close(grouped[0], repeated[0]) and close(grouped[1], repeated[1])


def test_multi_query_attention_equals_one_shared_kv_head():
    q, k, v = qkv(1, 3, 1, 4, 4, 2)
    shared = reference_core_attention(q, k, v)
    expanded = reference_core_attention(q, k.expand(1, 3, 4, 2), v.expand(1, 3, 4, 2))
    assert close(shared[0], expanded[0])
    # and each query head alone, with the one kv head, gives the same row
    for hh in range(3):
        assert close(shared[0][:, hh : hh + 1], reference_core_attention(q[:, hh : hh + 1], k, v)[0])


def test_a_very_negative_sink_is_no_sink():
    q, k, v = qkv(1, 4, 2, 5, 5, 3)
    plain = reference_core_attention(q, k, v)
    sunk = reference_core_attention(q, k, v, sinks=torch.full((4,), -1e3, dtype=torch.float64))
    assert close(sunk[0], plain[0]) and close(sunk[1], plain[1])


def test_a_sink_shrinks_every_row_by_its_share():
    # out_sink = out * Z / (Z + exp(sink)) with Z = exp(lse): the sink only rescales each row.
    q, k, v = qkv(1, 4, 4, 5, 5, 3)
    out, lse = reference_core_attention(q, k, v)
    sunk, sunk_lse = reference_core_attention(q, k, v, sinks=SINKS)
    share = torch.exp(lse) / (torch.exp(lse) + torch.exp(SINKS)[None, :, None])  # (b, h, t)
    assert close(sunk, out * share[..., None]) and close(sunk_lse, lse)


def test_lower_precision_inputs_are_upcast():
    q, k, v = qkv(1, 2, 2, 4, 4, 3)
    out, lse = reference_core_attention(q.float(), k.half(), v.bfloat16())
    assert out.dtype == lse.dtype == torch.float64
    want_out, want_lse = reference_core_attention(q.float().double(), k.half().double(), v.bfloat16().double())
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)


def test_output_shapes():
    q, k, v = qkv(2, 6, 3, 4, 7, 5)
    out, lse = reference_core_attention(q, k, v)
    assert out.shape == (2, 6, 4, 5) and lse.shape == (2, 6, 4)


# -- gradients ---------------------------------------------------------------------------------------------------


def test_gradcheck_with_every_option():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 1, 4, 4, 2, seed=3))
    sinks = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)

    def fn(q, k, v, sinks):
        return reference_core_attention(q, k, v, window=3, softcap=1.1, sinks=sinks, alibi_slopes=slopes)

    assert torch.autograd.gradcheck(fn, (q, k, v, sinks))


def test_gradcheck_packed_and_non_causal():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 2, 4, 4, 2, seed=4))
    sinks = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, sinks):
        return reference_core_attention(q, k, v, causal=False, sinks=sinks, seq_lens=[1, 3])

    assert torch.autograd.gradcheck(fn, (q, k, v, sinks))


def test_sink_gradient_by_hand():
    # Row 0 of the hand case: out = 3 e / (e + e^s), so d out / d s = -3 e e^s / (e + e^s)^2.
    sink = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    out, _ = reference_core_attention(Q2, K2, V2, sinks=sink)
    out[0, 0, 0, 0].backward()
    es = math.exp(0.5)
    assert close(sink.grad, f64(-3 * E * es / (E + es) ** 2))


@pytest.mark.parametrize("with_sinks", [False, True])
def test_rows_without_keys_are_zero_with_zero_finite_gradients(with_sinks):
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 2, 5, 2, 3))  # queries 0..2 sit before every key
    sinks = torch.tensor([0.5, -0.5], dtype=torch.float64, requires_grad=True) if with_sinks else None
    out, lse = reference_core_attention(q, k, v, sinks=sinks)
    assert torch.equal(out[:, :, :3], torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    assert torch.equal(lse[:, :, :3], torch.full((1, 2, 3), -math.inf, dtype=torch.float64))
    assert torch.isfinite(out[:, :, 3:]).all() and torch.isfinite(lse[:, :, 3:]).all()
    loss = (out * randn(*out.shape, seed=9)).sum() + lse[:, :, 3:].sum()
    leaves = [q, k, v] + ([sinks] if with_sinks else [])
    grads = torch.autograd.grad(loss, leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][:, :, :3], torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    assert grads[0][:, :, 3:].abs().max() > 0


# -- per-row key lengths (kv_lens) -------------------------------------------------------------------------------


def test_hand_kv_lens_reads_only_the_rows_keys():
    # Row 1 keeps 2 of its 3 keys: it is the hand case Q2, K2, V2 (the third key, 9 -> 100, is never seen),
    # while row 0 keeps all 3, its queries now sitting at positions 1 and 2.
    q = torch.cat([Q2, Q2])  # (2, 1, 2, 1)
    k = torch.cat([column(1.0, 0.0, 9.0), column(1.0, 0.0, 9.0)])  # (2, 1, 3, 1)
    v = torch.cat([column(3.0, 5.0, 100.0), column(3.0, 5.0, 100.0)])  # (2, 1, 3, 1)
    out, lse = reference_core_attention(q, k, v, kv_lens=torch.tensor([3, 2]))
    assert close(out[1].flatten(), f64(3.0, (E**2 * 3 + 5) / (E**2 + 1)))
    assert close(lse[1].flatten(), f64(1.0, math.log(E**2 + 1)))
    assert close(out[0].flatten(), f64((E * 3 + 5) / (E + 1), (E**2 * 3 + 5 + E**18 * 100) / (E**2 + 1 + E**18)))


KV_LENS_OPTIONS = [
    {},
    {"causal": False},
    {"window": 2, "softcap": 1.5, "alibi_slopes": SLOPES, "sinks": SINKS},
]


@pytest.mark.parametrize("options", KV_LENS_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("t_q", [1, 3])
def test_kv_lens_equal_running_each_row_on_its_own_keys(options, t_q):
    q, k, v = qkv(3, 4, 2, t_q, 6, 3, seed=11)
    lengths = [6, 2, 4]  # the second row has fewer keys than queries when t_q = 3
    out, lse = reference_core_attention(q, k, v, kv_lens=torch.tensor(lengths), **options)
    for r, n in enumerate(lengths):
        alone_out, alone_lse = reference_core_attention(
            q[r : r + 1], k[r : r + 1, :, :n], v[r : r + 1, :, :n], **options
        )
        assert close(out[r : r + 1], alone_out) and close(lse[r : r + 1], alone_lse)


def test_kv_lens_of_every_key_is_no_kv_lens():
    q, k, v = qkv(2, 4, 2, 3, 5, 3, seed=12)
    for kv_lens in ([5, 5], (5, 5), torch.tensor([5, 5], dtype=torch.int32)):
        assert all(
            close(a, b)
            for a, b in zip(
                reference_core_attention(q, k, v, kv_lens=kv_lens, window=2),
                reference_core_attention(q, k, v, window=2),
                strict=True,
            )
        )


def test_kv_lens_rows_without_keys_and_gradcheck():
    # Row 1 has 1 key for 3 queries: its queries 0 and 1 (positions -2, -1) see nothing, causally.
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 1, 3, 4, 2, seed=13))
    sinks = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    kv_lens = torch.tensor([4, 1])
    out, lse = reference_core_attention(q, k, v, sinks=sinks, kv_lens=kv_lens)
    assert torch.equal(out[1, :, :2], torch.zeros(2, 2, 2, dtype=torch.float64))
    assert torch.isneginf(lse[1, :, :2]).all() and torch.isfinite(lse[1, :, 2]).all()

    def fn(q, k, v, sinks):
        return reference_core_attention(q, k, v, window=3, softcap=1.1, sinks=sinks, kv_lens=kv_lens)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, sinks))


# -- argument checks ---------------------------------------------------------------------------------------------

Q, K, V = qkv(1, 4, 2, 3, 3, 2)


@pytest.mark.parametrize(
    "args, options, match",
    [
        ((Q[0], K, V), {}, r"q must be 4-D"),
        ((Q, K, V[:, :, :2]), {}, r"k and v must have the same shape"),
        ((Q, torch.cat([K, K]), torch.cat([V, V])), {}, r"must agree in batch and head_dim"),
        ((Q, K[..., :1], V[..., :1]), {}, r"must agree in batch and head_dim"),
        ((Q[:, :3], K, V), {}, r"q has 3 heads and k/v 2"),
        ((Q.long(), K, V), {}, r"q must be a floating-point tensor, got dtype torch.int64"),
        ((Q, K.to(torch.complex128), V), {}, r"k must be a floating-point tensor"),
        ((Q, K, V), {"causal": 1}, r"causal must be True or False, got 1"),
        ((Q, K, V), {"scale": 0.0}, r"scale must be None or a finite number > 0, got 0.0"),
        ((Q, K, V), {"scale": -1.0}, r"scale must be None or a finite number > 0"),
        ((Q, K, V), {"scale": math.nan}, r"scale must be None or a finite number > 0, got nan"),
        ((Q, K, V), {"scale": True}, r"scale must be None or a finite number > 0, got True"),
        ((Q, K, V), {"softcap": math.inf}, r"softcap must be None or a finite number > 0, got inf"),
        ((Q, K, V), {"softcap": 0}, r"softcap must be None or a finite number > 0, got 0"),
        ((Q, K, V), {"window": 0}, r"window must be None or an integer >= 1, got 0"),
        ((Q, K, V), {"window": 2.0}, r"window must be None or an integer >= 1, got 2.0"),
        ((Q, K, V), {"window": True}, r"window must be None or an integer >= 1, got True"),
        ((Q, K, V), {"window": 2, "causal": False}, r"window=2 needs causal=True"),
        ((Q, K, V), {"sinks": torch.zeros(2, dtype=torch.float64)}, r"sinks has shape \(2,\), expected \(4,\)"),
        ((Q, K, V), {"sinks": torch.zeros(4, 1)}, r"sinks has shape \(4, 1\), expected \(4,\)"),
        ((Q, K, V), {"sinks": torch.zeros(4, dtype=torch.long)}, r"sinks must be a floating-point tensor"),
        ((Q, K, V), {"alibi_slopes": torch.zeros(1)}, r"alibi_slopes has shape \(1,\), expected \(4,\)"),
        ((Q, K, V), {"alibi_slopes": [0.5] * 4}, r"alibi_slopes must be a floating-point tensor"),
        ((Q, K, V), {"seq_lens": [1, 1]}, r"seq_lens \[1, 1\] must be lengths >= 1 summing to the 3 tokens"),
        ((Q, K, V), {"seq_lens": [3, 0]}, r"seq_lens \[3, 0\] must be lengths >= 1"),
        ((Q, K, V), {"seq_lens": [True, 2]}, r"seq_lens must be a 1-D integer tensor or a list/tuple of ints"),
        ((Q, K, V), {"seq_lens": [1.0, 2.0]}, r"seq_lens must be a 1-D integer tensor or a list/tuple of ints"),
        ((Q, K, V), {"seq_lens": torch.tensor([1.0, 2.0])}, r"dtype torch.float32"),
        ((Q, K, V), {"seq_lens": torch.tensor([[3]])}, r"got a tensor of shape \(1, 1\)"),
        ((Q, K, V), {"seq_lens": 3}, r"seq_lens must be a 1-D integer tensor or a list/tuple of ints, got 3"),
        ((Q[:, :, :2], K, V), {"seq_lens": [3]}, r"seq_lens needs as many queries as keys .* t_q=2, t_k=3"),
        ((Q, K, V), {"kv_lens": [3, 3]}, r"kv_lens has 2 entries, expected one per batch row \(1\)"),
        ((Q, K, V), {"kv_lens": [0]}, r"kv_lens \[0\] must each lie in \[1, t_k=3\]"),
        ((Q, K, V), {"kv_lens": torch.tensor([4])}, r"kv_lens \[4\] must each lie in \[1, t_k=3\]"),
        ((Q, K, V), {"kv_lens": torch.tensor([3.0])}, r"kv_lens must be a 1-D integer tensor, got shape \(1,\)"),
        ((Q, K, V), {"kv_lens": [True]}, r"kv_lens must be a 1-D integer tensor or a list/tuple of ints"),
        ((Q, K, V), {"kv_lens": [3], "seq_lens": [3]}, r"kv_lens and seq_lens cannot be combined"),
    ],
)
def test_bad_arguments_are_value_errors(args, options, match):
    with pytest.raises(ValueError, match=match):
        reference_core_attention(*args, **options)


def test_tensors_on_another_device_are_refused():
    with pytest.raises(ValueError, match=r"k is on device meta"):
        reference_core_attention(Q, K.to("meta"), V)
    with pytest.raises(ValueError, match=r"sinks is on device meta"):
        reference_core_attention(Q, K, V, sinks=torch.zeros(4, device="meta"))


# -- the multi-head reference ------------------------------------------------------------------------------------


def split_heads(features: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, width = features.shape
    return features.view(b, t, heads, width // heads).transpose(1, 2)  # (b, heads, t, head_dim)


def merge_heads(context: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = context.shape
    return context.transpose(1, 2).reshape(b, t, h * hd)  # (b, t, h * head_dim)


def projections(x: torch.Tensor, w: AttentionWeights) -> list[torch.Tensor]:
    w = w.to(dtype=torch.float64)
    x = x.double()
    biases = (w.b_query, w.b_key, w.b_value) if w.qkv_bias else (None, None, None)
    return [torch.nn.functional.linear(x, W, b) for W, b in zip((w.W_query, w.W_key, w.W_value), biases, strict=True)]


def weights(d_in=5, d_out=8, qkv_bias=True, **kwargs) -> AttentionWeights:
    return AttentionWeights.random(d_in, d_out, qkv_bias, generator=torch.Generator().manual_seed(7), **kwargs)


def test_multi_head_matches_a_pipeline_around_the_naive_backend():
    w, x = weights(), randn(2, 6, 5, seed=1)  # x (b, t, d_in)
    queries, keys, values = projections(x, w)  # (b, t, d_out) each
    context = BACKENDS["naive"](split_heads(queries, 2), split_heads(keys, 2), split_heads(values, 2))
    expected = merge_heads(context) @ w.W_out.double().T + w.b_out.double()  # (b, t, d_out)
    out = reference_attention(x, w, 2)
    assert out.dtype == torch.float64 and close(out, expected)


def test_multi_head_grouped_weights_equal_repeated_kv_rows():
    h, h_kv, head_dim = 4, 2, 2
    w, x = weights(num_heads=h, num_kv_heads=h_kv), randn(2, 5, 5, seed=2)
    assert w.d_kv == h_kv * head_dim

    def repeat_rows(t: torch.Tensor) -> torch.Tensor:  # (d_kv, ...) -> (d_out, ...) in repeat_kv order
        return (
            t.reshape(h_kv, head_dim, *t.shape[1:])
            .repeat_interleave(h // h_kv, dim=0)
            .reshape(h * head_dim, *t.shape[1:])
        )

    full = AttentionWeights(
        w.W_query, repeat_rows(w.W_key), repeat_rows(w.W_value), w.W_out, w.b_out,
        w.b_query, repeat_rows(w.b_key), repeat_rows(w.b_value),
    )  # fmt: skip
    grouped = reference_attention(x, w, h, window=3, softcap=1.5)
    assert close(grouped, reference_attention(x, full, h, window=3, softcap=1.5))
    assert close(grouped, reference_attention(x, w, h, num_kv_heads=h_kv, window=3, softcap=1.5))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_multi_head_window_one_with_sinks_by_hand(num_kv_heads):
    # window=1: token i sees only itself, so head hh outputs v_i * sigmoid(s_ii - sink_hh), with
    # s_ii = softcap * tanh(<q_i, k_i> / sqrt(head_dim) / softcap).
    h, c = 4, 0.7
    w, x = weights(num_heads=h, num_kv_heads=num_kv_heads, sinks=True), randn(1, 4, 5, seed=3)
    queries, keys, values = projections(x, w)
    q = split_heads(queries, h)  # (b, h, t, hd)
    k = split_heads(keys, num_kv_heads).repeat_interleave(h // num_kv_heads, dim=1)  # (b, h, t, hd)
    v = split_heads(values, num_kv_heads).repeat_interleave(h // num_kv_heads, dim=1)  # (b, h, t, hd)
    s = c * torch.tanh((q * k).sum(-1) / q.shape[-1] ** 0.5 / c)  # (b, h, t)
    context = v * torch.sigmoid(s - w.sinks.double()[None, :, None])[..., None]  # (b, h, t, hd)
    expected = merge_heads(context) @ w.W_out.double().T + w.b_out.double()
    assert close(reference_attention(x, w, h, window=1, softcap=c), expected)


def test_multi_head_gradients_reach_x_and_every_weight_including_sinks():
    w = weights(d_in=3, d_out=4, num_heads=2, num_kv_heads=1, sinks=True).to(dtype=torch.float64)
    w = w.map_tensors(lambda t: t.requires_grad_())
    x = randn(1, 3, 3, seed=4).requires_grad_()

    def fn(x, sinks, W_key):
        with_leaves = AttentionWeights(
            w.W_query, W_key, w.W_value, w.W_out, w.b_out, w.b_query, w.b_key, w.b_value, sinks
        )
        return reference_attention(x, with_leaves, 2)

    assert torch.autograd.gradcheck(fn, (x, w.sinks, w.W_key))
    reference_attention(x, w, 2).sum().backward()  # float64 leaves: gradients land on them, as check.py relies on
    assert all(t.grad is not None and t.grad.abs().max() > 0 for t in (w.W_query, w.W_key, w.sinks, w.b_out))


def test_multi_head_very_negative_sinks_equal_none():
    w, x = weights(num_heads=2, sinks=True), randn(1, 4, 5, seed=5)
    no_sinks = AttentionWeights(w.W_query, w.W_key, w.W_value, w.W_out, w.b_out, w.b_query, w.b_key, w.b_value)
    very_negative = AttentionWeights(
        w.W_query, w.W_key, w.W_value, w.W_out, w.b_out, w.b_query, w.b_key, w.b_value, torch.full((2,), -1e3)
    )
    assert close(reference_attention(x, very_negative, 2), reference_attention(x, no_sinks, 2))
    assert not close(reference_attention(x, w, 2), reference_attention(x, no_sinks, 2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, x: reference_attention(x, w, 3), r"d_out 8 is not divisible by num_heads 3"),
        (lambda w, x: reference_attention(x, w, 0), r"num_heads must be an integer >= 1, got 0"),
        (lambda w, x: reference_attention(x, w, 2, num_kv_heads=1), r"num_kv_heads=1, but the weights' d_kv=8 holds 2"),
        (lambda w, x: reference_attention(x[..., :4], w, 2), r"x has last dimension 4, the weights' d_in is 5"),
        (lambda w, x: reference_attention(x[0], w, 2), r"x must be a 3-D tensor"),
        (lambda w, x: reference_attention(x, {"W_query": 1}, 2), r"weights must be an AttentionWeights, got dict"),
        (lambda w, x: reference_attention(x, weights(num_heads=4, sinks=True), 2), r"weights.sinks has shape \(4,\)"),
        (
            lambda w, x: reference_attention(x, weights(num_heads=8, num_kv_heads=1), 2),
            r"d_kv=1 is not a multiple of head_dim=4",
        ),
        (lambda w, x: reference_attention(x, w, 2, window=0), r"window must be None or an integer >= 1, got 0"),
    ],
)
def test_multi_head_bad_arguments_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(weights(), randn(1, 3, 5, seed=6))
