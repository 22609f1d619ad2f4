"""AttentionWeights: shape validation, and every implementation loads and exports the same weights."""

import pytest
import torch

from attnlab import IMPLEMENTATIONS, AttentionWeights, build


def test_random_has_linear_layout_and_optional_biases():
    w = AttentionWeights.random(5, 8, qkv_bias=True, generator=torch.Generator().manual_seed(0))
    assert w.W_query.shape == (8, 5) and w.W_out.shape == (8, 8) and w.b_query.shape == (8,)
    assert (w.d_in, w.d_out, w.qkv_bias) == (5, 8, True)
    assert AttentionWeights.random(5, 8).b_key is None


def test_inconsistent_shapes_are_rejected():
    w = AttentionWeights.random(5, 8)
    with pytest.raises(ValueError, match=r"W_key has shape \(8, 4\), expected \(8, 5\)"):
        AttentionWeights(w.W_query, torch.zeros(8, 4), w.W_value, w.W_out, w.b_out)
    with pytest.raises(ValueError, match="b_query, b_key and b_value must be all given or all None"):
        AttentionWeights(w.W_query, w.W_key, w.W_value, w.W_out, w.b_out, b_query=torch.zeros(8))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_set_then_get_round_trips_exactly(name, qkv_bias):
    d_in = 8 if "torch_mha" in name else 6
    w = AttentionWeights.random(d_in, 8, qkv_bias, generator=torch.Generator().manual_seed(1))
    module = build(name, d_in=d_in, d_out=8, num_heads=2, context_length=4, qkv_bias=qkv_bias)
    module.set_weights(w)
    back = module.get_weights()
    for field in ("W_query", "W_key", "W_value", "W_out", "b_out", "b_query", "b_key", "b_value"):
        expected, actual = getattr(w, field), getattr(back, field)
        assert (expected is None) == (actual is None)
        if expected is not None:
            assert torch.equal(actual, expected), field


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_mismatched_weights_are_rejected(name):
    module = build(name, d_in=8, d_out=8, num_heads=2, context_length=4)
    with pytest.raises(ValueError, match="weights are for d_in=8, d_out=4; this module has d_in=8, d_out=8"):
        module.set_weights(AttentionWeights.random(8, 4))
    with pytest.raises(ValueError, match="weights have qkv_bias=True; this module has qkv_bias=False"):
        module.set_weights(AttentionWeights.random(8, 8, qkv_bias=True))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_parameter_count_is_the_canonical_one(name):
    # Every layout stores exactly the canonical parameters: 3 d_out d_in + d_out^2 + d_out (+ 3 d_out).
    module = build(name, d_in=8, d_out=8, num_heads=2, context_length=4, qkv_bias=True)
    assert sum(p.numel() for p in module.parameters()) == 3 * 8 * 8 + 8 * 8 + 8 + 3 * 8


def test_non_matrix_weights_are_rejected():
    w = AttentionWeights.random(5, 8)
    with pytest.raises(ValueError, match=r"W_query must be 2-D \(d_out, d_in\), got shape \(8,\)"):
        AttentionWeights(torch.zeros(8), w.W_key, w.W_value, w.W_out, w.b_out)
