"""Bad configuration and bad input give a clear ValueError naming the value and the limit."""

import re

import pytest
import torch

from attnlab import IMPLEMENTATIONS, AttentionWeights, build
from attnlab.registry import get_implementation


def make(name, **overrides):
    kwargs = dict(d_in=8, d_out=8, num_heads=2, context_length=6)
    kwargs.update(overrides)
    return build(name, **kwargs)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_d_out_not_divisible_by_heads(name):
    with pytest.raises(ValueError, match="d_out 10 is not divisible by num_heads 4"):
        make(name, d_out=10, d_in=10, num_heads=4)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(6, 8), (1, 2, 6, 8), (8,)])
def test_input_must_be_3d(name, shape):
    with pytest.raises(ValueError, match=re.escape(f"input must be 3-D (batch, tokens, d_in), got shape {shape}")):
        make(name)(torch.randn(shape))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_last_dimension_must_be_d_in(name):
    with pytest.raises(ValueError, match="input last dimension 5 does not match d_in 8"):
        make(name)(torch.randn(2, 3, 5))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_sequence_longer_than_context(name):
    with pytest.raises(ValueError, match="sequence length 7 exceeds context_length 6"):
        make(name)(torch.randn(2, 7, 8))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_empty_sequence(name):
    with pytest.raises(ValueError, match="sequence length 0"):
        make(name)(torch.randn(2, 0, 8))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": 0}, "num_heads must be a positive integer, got 0"),
        ({"d_in": -3}, "d_in must be a positive integer, got -3"),
        ({"context_length": 0}, "context_length must be a positive integer, got 0"),
        ({"dropout": 1.0}, "dropout 1.0 must be in [0, 1)"),
        # bools are ints in Python, but True is a mistake where a size is meant
        ({"num_heads": True}, "num_heads must be a positive integer, got True"),
        ({"d_in": True}, "d_in must be a positive integer, got True"),
        ({"d_out": 8.0}, "d_out must be a positive integer, got 8.0"),
        ({"context_length": True}, "context_length must be a positive integer, got True"),
        ({"context_length": "6"}, "context_length must be a positive integer, got '6'"),
        # dropout: a real number, not a string, bool or complex; nan and inf are out of range
        ({"dropout": "0.1"}, "dropout must be a real number in [0, 1), got '0.1' (str)"),
        ({"dropout": True}, "dropout must be a real number in [0, 1), got True (bool)"),
        ({"dropout": 0.1j}, "dropout must be a real number in [0, 1), got 0.1j (complex)"),
        ({"dropout": None}, "dropout must be a real number in [0, 1), got None (NoneType)"),
        ({"dropout": float("nan")}, "dropout nan must be in [0, 1)"),
        ({"dropout": float("inf")}, "dropout inf must be in [0, 1)"),
        ({"dropout": -0.1}, "dropout -0.1 must be in [0, 1)"),
        # qkv_bias: exactly True or False
        ({"qkv_bias": "no"}, "qkv_bias must be True or False, got 'no'"),
        ({"qkv_bias": 1}, "qkv_bias must be True or False, got 1"),
        ({"qkv_bias": None}, "qkv_bias must be True or False, got None"),
        # the modern options: checked (for every implementation) before asking whether it can do them
        ({"num_kv_heads": 3}, "num_kv_heads 3 must divide num_heads 2"),
        ({"num_kv_heads": 0}, "num_kv_heads must be None or a positive integer, got 0"),
        ({"num_kv_heads": True}, "num_kv_heads must be None or a positive integer, got True"),
        ({"num_kv_heads": 1.0}, "num_kv_heads must be None or a positive integer, got 1.0"),
        ({"window": 0}, "window must be None or a positive integer (keys a query sees, itself included), got 0"),
        ({"window": 2.5}, "window must be None or a positive integer (keys a query sees, itself included), got 2.5"),
        ({"window": True}, "window must be None or a positive integer (keys a query sees, itself included), got True"),
        ({"softcap": 0}, "softcap must be None or a finite number > 0, got 0"),
        ({"softcap": -1.0}, "softcap must be None or a finite number > 0, got -1.0"),
        ({"softcap": float("inf")}, "softcap must be None or a finite number > 0, got inf"),
        ({"softcap": float("nan")}, "softcap must be None or a finite number > 0, got nan"),
        ({"softcap": True}, "softcap must be None or a finite number > 0, got True"),
        ({"softcap": "1"}, "softcap must be None or a finite number > 0, got '1'"),
        ({"sinks": 1}, "sinks must be True or False, got 1"),
        ({"sinks": None}, "sinks must be True or False, got None"),
    ],
)
def test_invalid_configuration(name, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(name, **overrides)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_integral_and_real_numbers_of_other_types_are_accepted(name):
    np = pytest.importorskip("numpy")
    module = make(name, d_in=np.int64(8), num_heads=np.int32(2), dropout=0)  # int 0 is a fine dropout
    assert (module.d_in, module.num_heads, module.dropout_p) == (8, 2, 0.0)
    assert type(module.d_in) is int and type(module.dropout_p) is float


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("field", "dtype"), [("W_key", torch.int64), ("b_out", torch.bool), ("b_value", torch.complex64)]
)
def test_weights_that_are_not_floating_point_are_refused_not_cast(name, field, dtype):
    module = make(name, qkv_bias=True)
    before = module.get_weights()
    weights = AttentionWeights.random(8, 8, qkv_bias=True)
    setattr(weights, field, getattr(weights, field).to(dtype))  # after construction: set_weights' own check
    with pytest.raises(ValueError, match=re.escape(f"weights.{field} is {dtype}; weights must be floating-point")):
        module.set_weights(weights)
    after = module.get_weights()
    assert all(torch.equal(getattr(before, f), getattr(after, f)) for f in ("W_query", "W_key", "b_out", "b_value"))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_weights_of_another_key_value_width_are_refused(name):
    module = make(name)  # 2 heads of 4: d_kv = 8
    gqa = AttentionWeights.random(8, 8, num_heads=2, num_kv_heads=1)  # d_kv = 4
    with pytest.raises(ValueError, match=re.escape("weights have key/value width d_kv=4; this module has d_kv=8")):
        module.set_weights(gqa)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_sinks_in_the_weights_are_never_dropped(name):
    module = make(name)
    with_sinks = AttentionWeights.random(8, 8, num_heads=2, sinks=True)
    with pytest.raises(ValueError, match=re.escape("weights carry sinks; this module was built with sinks=False")):
        module.set_weights(with_sinks)


def test_a_module_with_sinks_needs_weights_with_sinks_of_its_heads():
    module = make("einsum", sinks=True)
    with pytest.raises(ValueError, match=re.escape("weights have no sinks; this module was built with sinks=True")):
        module.set_weights(AttentionWeights.random(8, 8))
    four_heads = AttentionWeights.random(8, 8, num_heads=4, sinks=True)  # valid weights, but 4 sinks for 2 heads
    with pytest.raises(ValueError, match=re.escape("weights.sinks has shape (4,); this module has 2 heads")):
        module.set_weights(four_heads)


def test_torch_mha_needs_equal_widths():
    for name in ("torch_mha", "torch_mha_fast"):
        with pytest.raises(ValueError, match="needs d_in == d_out, got d_in 6 and d_out 8"):
            make(name, d_in=6)


def test_flex_refuses_dropout_up_front():
    with pytest.raises(ValueError, match=re.escape("flex does not support dropout; got dropout=0.1; implementations")):
        make("flex", dropout=0.1)


def test_flex_refuses_cpu_backward_with_a_clear_error():
    module = make("flex")
    with pytest.raises(NotImplementedError, match="no backward pass on the CPU"):
        module(torch.randn(1, 4, 8))
    assert get_implementation("flex").capabilities.unsupported_reason("cpu", "backward") is not None
    with torch.no_grad():
        assert module(torch.randn(1, 4, 8)).shape == (1, 4, 8)


def test_unknown_implementation_lists_valid_names():
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'; valid names: wrapper, ch03"):
        make("nope")


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_input_dtype_must_match_the_parameters(name):
    message = "input is torch.float64 on cpu but the module's parameters are torch.float32"
    with pytest.raises(ValueError, match=re.escape(message)):
        make(name)(torch.randn(2, 3, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"window": 2**64}, "exceeds 2**62 (no sequence is that long)"), ({"softcap": 1e39}, "exceeds 1e+30")],
)
def test_window_and_softcap_beyond_int64_and_float32_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build("einsum", d_in=8, d_out=8, num_heads=2, context_length=8, **options)
