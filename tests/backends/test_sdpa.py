"""sdpa and sdpa_mask against the float64 reference, feature by feature, and what they refuse.

Error bounds are FlashAttention's rule (see flash_reference.py): at most 2x the naive backend's float32
error for the output, 3x for the gradients, plus a floor scaled by the reference's magnitude.
"""

from __future__ import annotations

import pytest
import torch
from flash_reference import assert_kv_lens_padding_is_ignored, assert_matches_reference, make_inputs

from attnlab.backends import BACKENDS
from attnlab.backends.sdpa import SDPA_FEATURES, SDPA_MASK_FEATURES

sdpa = BACKENDS["sdpa"]
sdpa_mask = BACKENDS["sdpa_mask"]
PAIRS = [(37, 37), (5, 40), (40, 5)]  # equal, decoding with a cache (bottom-right), more queries than keys


def slopes(h: int) -> torch.Tensor:
    """ALiBi's geometric slopes 2^-1 .. 2^-h (h,)."""
    return 2.0 ** -torch.arange(1, h + 1, dtype=torch.float32)  # (h,)


def test_declared_features():
    assert {"gqa", "dropout"} == SDPA_FEATURES
    assert {"gqa", "window", "alibi_slopes", "seq_lens", "kv_lens", "dropout"} == SDPA_MASK_FEATURES


@pytest.mark.parametrize("name", ["sdpa", "sdpa_mask"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("t_q", "t_k"), PAIRS)
@pytest.mark.parametrize("h_kv", [1, 2, 6])
def test_gqa(name, t_q, t_k, causal, h_kv):
    # Six query heads over one (MQA), two (GQA, groups of three) or six key/value heads.
    q, k, v, dout = make_inputs(2, 6, t_q, t_k, 16, h_kv=h_kv, seed=t_q + h_kv)
    assert_matches_reference(BACKENDS[name], q, k, v, dout, causal=causal)


@pytest.mark.parametrize(("t_q", "t_k"), PAIRS)
@pytest.mark.parametrize("window", [1, 4, 64])
def test_mask_window(t_q, t_k, window):
    # window=1: each query sees itself only; 64 exceeds every length (the causal mask alone).
    q, k, v, dout = make_inputs(1, 4, t_q, t_k, 16, h_kv=2, seed=window)
    assert_matches_reference(sdpa_mask, q, k, v, dout, causal=True, window=window)


@pytest.mark.parametrize(("t_q", "t_k"), PAIRS)
@pytest.mark.parametrize("causal", [True, False])
def test_mask_alibi(t_q, t_k, causal):
    q, k, v, dout = make_inputs(2, 4, t_q, t_k, 16, seed=t_q)
    assert_matches_reference(sdpa_mask, q, k, v, dout, causal=causal, alibi_slopes=slopes(4), window=None)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq_lens", [[37], [1, 36], [10, 1, 20, 6]])
def test_mask_packed_sequences(seq_lens, causal):
    q, k, v, dout = make_inputs(2, 4, 37, 37, 16, h_kv=1, seed=len(seq_lens))
    assert_matches_reference(sdpa_mask, q, k, v, dout, causal=causal, seq_lens=seq_lens)


@pytest.mark.parametrize("t_q", [1, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_mask_kv_lens(t_q, causal):
    # Ragged rows of a KV cache with GQA, a window and ALiBi; with t_q = 4 the second row's 2 keys leave its
    # first 2 queries without a key (zeros) under causal attention.
    q, k, v, dout = make_inputs(3, 4, t_q, 30, 16, h_kv=2, seed=t_q)
    options = {"kv_lens": torch.tensor([30, 2, 17]), "alibi_slopes": slopes(4), "window": 6 if causal else None}
    assert_matches_reference(sdpa_mask, q, k, v, dout, causal=causal, **options)
    kv_lens = options.pop("kv_lens")
    assert_kv_lens_padding_is_ignored(sdpa_mask, q, k, v, dout, kv_lens, causal=causal, **options)


def test_mask_everything_at_once():
    # GQA, a window, ALiBi and packing in one call; the ALiBi bias and the boolean masks must compose.
    q, k, v, dout = make_inputs(2, 4, 30, 30, 16, h_kv=2, seed=7)
    options = {"window": 5, "alibi_slopes": slopes(4), "seq_lens": [12, 18]}
    assert_matches_reference(sdpa_mask, q, k, v, dout, causal=True, **options)


@pytest.mark.parametrize("name", ["sdpa", "sdpa_mask"])
@pytest.mark.parametrize("h_kv", [1, 4])
def test_dropout_drops_weights_and_rescales(name, h_kv):
    # Zero queries give every visible key the weight 1/n (row i of a causal square sees n = i + 1 keys), and
    # value vectors of ones make each output element the sum of the kept weights over (1 - p): so
    # out * (1 - p) * n must be an integer between 0 and n, and p = 0.5 must drop some weights. Exact up to
    # float32 rounding of a sum of at most 12 terms (1e-4 of n is far above it, far below 1).
    t, p = 12, 0.5
    q = torch.zeros(3, 4, t, 8)
    k, v = torch.randn(3, h_kv, t, 8), torch.ones(3, h_kv, t, 8)
    torch.manual_seed(0)
    out = BACKENDS[name](q, k, v, causal=True, dropout_p=p)  # (3, 4, t, 8)
    kept = out * (1 - p) * torch.arange(1, t + 1).view(t, 1)  # (3, 4, t, 8): kept keys per element
    assert (kept - kept.round()).abs().max().item() <= 1e-4 * t
    assert kept.min().item() >= -1e-4 and (kept - torch.arange(1, t + 1).view(t, 1)).max().item() <= 1e-4 * t
    assert (out != 1).any(), "dropout_p=0.5 dropped no weight"


@pytest.mark.parametrize("feature", ["softcap", "sinks", "return_lse"])
@pytest.mark.parametrize("name", ["sdpa", "sdpa_mask"])
def test_refuses_what_sdpa_cannot_do(name, feature):
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    options = {"softcap": {"softcap": 5.0}, "sinks": {"sinks": torch.zeros(2)}, "return_lse": {"return_lse": True}}
    with pytest.raises(ValueError, match=f"the {name} backend does not support {feature}; backends that do: naive"):
        BACKENDS[name](q, k, v, **options[feature])


@pytest.mark.parametrize("feature", ["window", "alibi_slopes", "seq_lens"])
def test_plain_sdpa_refuses_the_mask_features(feature):
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    options = {"window": {"window": 2}, "alibi_slopes": {"alibi_slopes": slopes(2)}, "seq_lens": {"seq_lens": [1, 3]}}
    with pytest.raises(ValueError, match=f"the sdpa backend does not support {feature}; backends that do: .*sdpa_mask"):
        sdpa(q, k, v, **options[feature])
