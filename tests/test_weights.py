"""AttentionWeights: shape validation, and every implementation loads and exports the same weights."""

import re

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
    with pytest.raises(ValueError, match=r"W_key has shape \(8, 4\), expected \(d_kv, 5\)"):
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


# -- grouped-query weights and attention sinks -------------------------------------------------------------------


def test_random_grouped_query_weights_have_narrow_key_and_value_projections():
    w = AttentionWeights.random(5, 8, qkv_bias=True, num_heads=4, num_kv_heads=2)  # head_dim 2, d_kv 4
    assert w.W_key.shape == w.W_value.shape == (4, 5) and w.b_key.shape == w.b_value.shape == (4,)
    assert (w.d_out, w.d_kv, w.has_sinks) == (8, 4, False)
    mqa = AttentionWeights.random(5, 8, num_heads=4, num_kv_heads=1)
    assert mqa.d_kv == 2
    assert AttentionWeights.random(5, 8, num_heads=4).d_kv == 8  # num_kv_heads defaults to num_heads


def test_random_sinks_are_one_standard_normal_logit_per_head():
    w = AttentionWeights.random(5, 8, num_heads=4, sinks=True, dtype=torch.float64)
    assert w.has_sinks and w.sinks.shape == (4,) and w.sinks.dtype == torch.float64
    many = AttentionWeights.random(4, 512, num_heads=512, sinks=True, generator=torch.Generator().manual_seed(0))
    # 512 standard normal draws: the sample std lies within 0.8..1.2 with probability far beyond 1 - 1e-6.
    assert 0.8 < many.sinks.std().item() < 1.2


def test_random_draws_the_same_tensors_as_before_and_the_sinks_last():
    def draw(**kwargs):
        return AttentionWeights.random(5, 8, True, generator=torch.Generator().manual_seed(3), **kwargs)

    plain, with_heads, with_sinks = draw(), draw(num_heads=2), draw(num_heads=2, sinks=True)
    for field in ("W_query", "W_key", "W_value", "W_out", "b_out", "b_query", "b_key", "b_value"):
        assert torch.equal(getattr(plain, field), getattr(with_heads, field))
        assert torch.equal(getattr(plain, field), getattr(with_sinks, field))


def test_map_to_and_detached_keep_the_sinks():
    w = AttentionWeights.random(5, 8, num_heads=2, num_kv_heads=1, sinks=True)
    w = w.map_tensors(lambda t: t.requires_grad_())
    moved = w.to(dtype=torch.float64)
    assert moved.sinks.dtype == torch.float64 and moved.d_kv == 4
    assert torch.equal(moved.sinks, w.sinks.double())
    copy = w.detached()
    assert not copy.sinks.requires_grad and torch.equal(copy.sinks, w.sinks)
    assert w.map_tensors(lambda t: t * 0).sinks.abs().max() == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_kv_heads": 2}, "num_heads is required when num_kv_heads is given or sinks=True"),
        ({"sinks": True}, "num_heads is required when num_kv_heads is given or sinks=True"),
        ({"num_heads": 3}, "num_heads must be an integer >= 1 dividing d_out=8, got 3"),
        ({"num_heads": 0}, "num_heads must be an integer >= 1 dividing d_out=8, got 0"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads must be an integer >= 1 dividing num_heads=4, got 3"),
        ({"num_heads": 4, "num_kv_heads": 0}, "num_kv_heads must be an integer >= 1 dividing num_heads=4, got 0"),
        ({"num_heads": 4, "sinks": 1}, "sinks must be True or False, got 1"),
        ({"qkv_bias": "yes"}, "qkv_bias must be True or False, got 'yes'"),
    ],
)
def test_random_refuses_inconsistent_head_counts(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        AttentionWeights.random(5, 8, **kwargs)


@pytest.mark.parametrize("d_in, d_out", [(0, 8), (5, -1), (5.0, 8)])
def test_random_refuses_bad_widths(d_in, d_out):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        AttentionWeights.random(d_in, d_out)


def _fields(**overrides):
    w = AttentionWeights.random(5, 8, qkv_bias=True, num_heads=4, num_kv_heads=2, sinks=True)
    values = {name: getattr(w, name) for name in ("W_query", "W_key", "W_value", "W_out", "b_out")}
    values.update(b_query=w.b_query, b_key=w.b_key, b_value=w.b_value, sinks=w.sinks)
    values.update(overrides)
    return values


def test_grouped_fields_are_accepted():
    w = AttentionWeights(**_fields())
    assert (w.d_in, w.d_out, w.d_kv, w.has_sinks) == (5, 8, 4, True)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"W_value": torch.zeros(8, 5)}, r"W_value has shape (8, 5), expected (4, 5) like W_key"),
        (
            {"W_key": torch.zeros(3, 5), "W_value": torch.zeros(3, 5)},
            "d_kv=3 (rows of W_key) must be at least 1 and divide d_out=8",
        ),
        ({"W_key": torch.zeros(0, 5), "W_value": torch.zeros(0, 5)}, "d_kv=0 (rows of W_key) must be at least 1"),
        ({"W_key": torch.zeros(4), "W_value": torch.zeros(4)}, "W_key has shape (4,), expected (d_kv, 5)"),
        ({"b_key": torch.zeros(8)}, "b_key has shape (8,), expected (4,)"),
        ({"b_value": torch.zeros(8)}, "b_value has shape (8,), expected (4,)"),
        ({"b_query": torch.zeros(4)}, "b_query has shape (4,), expected (8,)"),
        ({"sinks": torch.zeros(4, 1)}, "sinks must be 1-D (num_heads,), got shape (4, 1)"),
        ({"sinks": torch.zeros(3)}, "sinks has 3 entries (num_heads), which must divide d_out=8"),
        ({"sinks": torch.zeros(0)}, "sinks has 0 entries (num_heads), which must divide d_out=8"),
        # 1 sink = 1 head of width 8, but the keys are 4 wide: no whole number of kv heads
        ({"sinks": torch.zeros(1)}, "head_dim = d_out/num_heads = 8, which does not divide the key/value width d_kv=4"),
        ({"W_query": None}, "W_query is required, got None"),
        ({"W_out": [[0.0]]}, "W_out must be a torch.Tensor, got list"),
        (
            {"W_key": torch.zeros(4, 5, dtype=torch.long)},
            "W_key must be a floating-point tensor, got dtype torch.int64",
        ),
        ({"b_out": torch.zeros(8, dtype=torch.bool)}, "b_out must be a floating-point tensor, got dtype torch.bool"),
        (
            {"sinks": torch.zeros(4, dtype=torch.complex64)},
            "sinks must be a floating-point tensor, got dtype torch.complex64",
        ),
        (
            {"W_out": torch.zeros(8, 8, dtype=torch.float64)},
            "W_out has dtype torch.float64 but W_query has torch.float32: mixed dtypes",
        ),
        ({"sinks": torch.zeros(4, device="meta")}, "sinks is on device meta but W_query is on cpu: mixed devices"),
    ],
)
def test_inconsistent_fields_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        AttentionWeights(**_fields(**overrides))
