"""The modern options (GQA/MQA, sliding window, softcap, sinks) on every implementation: each one either
computes them exactly as the float64 reference does (forward, input gradient, every weight gradient with
W_key/W_value at d_kv and the sinks' gradient), or refuses them by name at construction. Never ignored.

What each implementation supports is whatever it declares (for the backend-based ones: what their backend
declares), so these tests follow the backends as they gain features.
"""

import dataclasses
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impl_cases import Case, compare_with_reference, needs_square

from attnlab import IMPLEMENTATIONS, AttentionWeights, build
from attnlab.implementations.base import FEATURE_OPTIONS, UnsupportedFeatureError
from attnlab.reference import reference_attention
from attnlab.registry import implementations_with, unsupported_reason

# Softcap 0.5: the scaled scores of these random weights reach ~1-2, where tanh bends them well away from
# the identity (test_each_option_changes_the_function checks that it matters).
VARIANTS = {
    "gqa6to2": Case(2, 7, 10, 18, num_heads=6, qkv_bias=True, context_length=8, num_kv_heads=2),
    "mqa8to1": Case(2, 6, 12, 16, num_heads=8, qkv_bias=False, context_length=6, num_kv_heads=1),
    "kv4of4": Case(2, 6, 16, 16, num_heads=4, qkv_bias=True, context_length=8, num_kv_heads=4),
    "window_short": Case(2, 9, 8, 12, num_heads=3, qkv_bias=True, context_length=9, window=3),
    "window_long": Case(1, 6, 8, 12, num_heads=3, qkv_bias=False, context_length=8, window=20),
    "softcap": Case(2, 7, 8, 12, num_heads=3, qkv_bias=True, context_length=7, softcap=0.5),
    "sinks": Case(2, 7, 8, 12, num_heads=3, qkv_bias=True, context_length=7, sinks=True),
    "all": Case(2, 9, 10, 18, num_heads=6, qkv_bias=True, context_length=9, num_kv_heads=2, window=4, softcap=0.5,
                sinks=True),
}  # fmt: skip


def _availability(name: str) -> str | None:
    """Why ``name`` cannot run here at all (missing packages, device), whatever the options."""
    return unsupported_reason(name, "cpu", "forward")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_each_option_is_computed_or_refused_by_name(name, variant):
    case = VARIANTS[variant]
    cls = IMPLEMENTATIONS[name]
    missing = cls.capabilities.unsupported_feature(case.features)
    if missing is None:
        if (reason := _availability(name)) is not None:
            pytest.skip(reason)
        if name == "flex":
            pytest.skip("flex compiles per shape (~10 s each): test_flex_takes_every_option_it_declares covers it")
        if needs_square(name) and case.d_in != case.d_out:
            pytest.skip("needs d_in == d_out")
        compare_with_reference(name, case)
        return
    option = FEATURE_OPTIONS[missing]
    assert unsupported_reason(name, "cpu", "forward", case.features) == f"does not support {option}"
    kwargs = dict(d_in=case.d_in, d_out=case.d_out, num_heads=case.num_heads, context_length=case.context_length)
    kwargs |= case.options | {"sinks": case.sinks}
    able = ", ".join(implementations_with(missing))
    with pytest.raises(ValueError, match=re.escape(f"{name} does not support {option}; got {option}=")) as info:
        build(name, **kwargs)
    assert str(info.value).endswith(f"implementations that do: {able}")
    with pytest.raises(UnsupportedFeatureError, match=f"{cls.__name__} does not support {option}"):
        cls(**kwargs)  # the class itself refuses too, not only the registry


def test_flex_takes_every_option_it_declares():
    # One case with every option flex declares, on the shape of a test_conformance fixed case (a compile that
    # the suite has already paid for when the flex backend declares nothing).
    features = IMPLEMENTATIONS["flex"].capabilities.features
    options = {
        "num_kv_heads": 2 if "gqa" in features else None,
        "window": 5 if "window" in features else None,
        "softcap": 0.5 if "softcap" in features else None,
        # On the CPU compiled flex returns no log-sum-exp, which its sinks need: refused there (tested below).
        "sinks": "sinks" in features and torch.cuda.is_available(),
    }
    if "sinks" in features and not torch.cuda.is_available():
        module = build("flex", d_in=16, d_out=16, num_heads=4, context_length=32, sinks=True)
        with torch.no_grad(), pytest.raises(NotImplementedError, match="which sinks need"):
            module(torch.randn(2, 13, 16))
    if options == {"num_kv_heads": None, "window": None, "softcap": None, "sinks": False}:
        pytest.skip("the flex backend declares none of num_kv_heads, window, softcap, sinks yet")
    compare_with_reference("flex", Case(2, 13, 16, 16, num_heads=4, qkv_bias=False, context_length=32, **options))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_weights_round_trip_with_the_key_value_width_and_sinks_it_supports(name):
    features = IMPLEMENTATIONS[name].capabilities.features
    num_kv_heads = 2 if "gqa" in features else None
    sinks = "sinks" in features
    weights = AttentionWeights.random(8, 8, True, num_heads=4, num_kv_heads=num_kv_heads, sinks=sinks)
    module = build(name, d_in=8, d_out=8, num_heads=4, context_length=4, qkv_bias=True, num_kv_heads=num_kv_heads,
                   sinks=sinks)  # fmt: skip
    module.set_weights(weights)
    back = module.get_weights()
    assert (back.d_kv, back.has_sinks) == (4 if num_kv_heads else 8, sinks)
    for field in dataclasses.fields(AttentionWeights):
        expected, actual = getattr(weights, field.name), getattr(back, field.name)
        assert (actual is None and expected is None) or torch.equal(actual, expected), field.name
    grads = module.get_weight_grads()  # zeros before any backward, in the same shapes
    assert grads.W_key.shape == weights.W_key.shape and (grads.sinks is None) == (not sinks)


def test_the_written_out_cores_do_every_option():
    # The backend-based ones follow their backends; these write their own core and say what it can do.
    assert {"einsum", "fused_qkv"} <= set(implementations_with("gqa")) & set(implementations_with("sinks"))
    assert {"ch03", "einsum", "fused_qkv"} <= set(implementations_with("window")) & set(implementations_with("softcap"))
    for name in ("wrapper", "torch_mha", "torch_mha_fast"):
        assert IMPLEMENTATIONS[name].capabilities.features == {"dropout"}, name


@pytest.mark.parametrize("variant", ["window_short", "softcap", "sinks"])
def test_each_option_changes_the_function(variant):
    # Otherwise the conformance above could not tell an implementation that ignores the option.
    case = VARIANTS[variant]
    gen = torch.Generator().manual_seed(0)
    weights = AttentionWeights.random(
        case.d_in, case.d_out, True, num_heads=case.num_heads, sinks=case.sinks, generator=gen, dtype=torch.float64
    )
    x = torch.randn(case.batch, case.seq_len, case.d_in, generator=gen, dtype=torch.float64)  # (b, t, d_in)
    with_option = reference_attention(x, weights, case.num_heads, **case.options)  # (b, t, d_out)
    plain = reference_attention(x, dataclasses.replace(weights, sinks=None), case.num_heads)  # (b, t, d_out)
    # 1e-2 of the output's magnitude is 1000x the conformance tolerance (1e-5).
    assert ((with_option - plain).abs().max() / with_option.abs().max()).item() > 1e-2


# Implementations that can take every option, here; flex compiles per shape (seconds), so it sweeps no shapes.
SWEEP = [
    name
    for name, cls in IMPLEMENTATIONS.items()
    if name != "flex" and _availability(name) is None and cls.capabilities.unsupported_feature(FEATURE_OPTIONS) is None
]


@st.composite
def variant_cases(draw):
    num_kv_heads = draw(st.integers(1, 3))
    num_heads = num_kv_heads * draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 4))
    seq_len = draw(st.integers(1, 8))
    return Case(
        batch=draw(st.integers(1, 2)),
        seq_len=seq_len,
        d_in=draw(st.integers(1, 12)),
        d_out=num_heads * head_dim,
        num_heads=num_heads,
        qkv_bias=draw(st.booleans()),
        context_length=draw(st.integers(seq_len, 10)),
        num_kv_heads=num_kv_heads,
        window=draw(st.none() | st.integers(1, 10)),
        softcap=draw(st.none() | st.floats(0.25, 5.0)),
        sinks=draw(st.booleans()),
    )


@pytest.mark.parametrize("name", SWEEP)
def test_random_shapes_and_options_match_the_reference(name):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=variant_cases(), seed=st.integers(0, 2**16))
    def check(case, seed):
        compare_with_reference(name, case, seed)

    check()
