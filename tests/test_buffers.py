"""Why the causal mask is a registered buffer (the understanding-buffers study).

A buffer moves with ``module.to(...)`` and is saved in ``state_dict``; a plain tensor attribute does
neither. Moves are shown with a dtype change and the ``meta`` device (no GPU needed), and on CUDA
where present.
"""

import io

import pytest
import torch

from attnlab import build
from attnlab.chapter3 import CausalAttention, CausalAttentionWithoutBuffer, MultiHeadAttention

# A restored module computes the same function with the same kernels: identical on this CPU. The limit is
# relative to the output's largest value and allows a few float32 ulps (6e-8 each), in case a BLAS rounds
# differently for differently aligned copies of the same numbers; a lost buffer or weight errs by 1e-2 or more.
SAME_FUNCTION_TOL = 1e-6


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def make(cls):
    torch.manual_seed(123)
    return cls(d_in=3, d_out=2, context_length=6, dropout=0.0)


def test_buffer_follows_dtype_change():
    module = make(CausalAttention).to(torch.float64)
    assert module.mask.dtype == torch.float64
    assert module.W_query.weight.dtype == torch.float64


def test_plain_attribute_stays_behind_on_dtype_change():
    module = make(CausalAttentionWithoutBuffer).to(torch.float64)
    assert module.W_query.weight.dtype == torch.float64
    assert module.mask.dtype == torch.float32  # left behind


def test_buffer_follows_device_move():
    module = make(CausalAttention).to("meta")
    assert module.mask.device.type == "meta"


def test_plain_attribute_stays_behind_on_device_move():
    module = make(CausalAttentionWithoutBuffer).to("meta")
    assert module.W_query.weight.device.type == "meta"
    assert module.mask.device.type == "cpu"  # left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the meta-device test covers the move")
def test_buffer_follows_to_cuda_and_plain_attribute_breaks_forward():
    batch = torch.rand(2, 6, 3, device="cuda")
    assert make(CausalAttention).to("cuda")(batch).is_cuda
    with pytest.raises(RuntimeError):
        make(CausalAttentionWithoutBuffer).to("cuda")(batch)


def test_state_dict_holds_the_buffer_but_not_the_plain_attribute():
    assert "mask" in make(CausalAttention).state_dict()
    assert "mask" not in make(CausalAttentionWithoutBuffer).state_dict()
    assert "mask" in MultiHeadAttention(3, 2, 6, 0.0, num_heads=2).state_dict()


def test_buffer_round_trips_through_torch_save():
    module = make(CausalAttention)
    with torch.no_grad():
        module.mask[0, 1] = 7.0  # a recognisable change that only a saved buffer can carry over
    stream = io.BytesIO()
    torch.save(module.state_dict(), stream)
    stream.seek(0)
    restored = CausalAttention(3, 2, 6, 0.0)
    restored.load_state_dict(torch.load(stream, weights_only=True))
    assert torch.equal(restored.mask, module.mask)
    batch = torch.rand(2, 6, 3)
    assert rel_err(restored(batch), module(batch)) <= SAME_FUNCTION_TOL


@pytest.mark.parametrize("name", ["einsum", "torch_mha"])
def test_non_persistent_masks_move_but_stay_out_of_checkpoints(name):
    # These masks are derived from context_length, so they are kept out of checkpoints on purpose.
    module = build(name, d_in=8, d_out=8, num_heads=2, context_length=6)
    assert "mask" not in module.state_dict()
    assert module.to("meta").mask.device.type == "meta"


@pytest.mark.parametrize("name", ["wrapper", "ch03", "einsum", "sdpa", "torch_mha"])
def test_state_dict_round_trip_reproduces_the_function(name):
    torch.manual_seed(0)
    module = build(name, d_in=8, d_out=8, num_heads=2, context_length=6)
    stream = io.BytesIO()
    torch.save(module.state_dict(), stream)
    stream.seek(0)
    restored = build(name, d_in=8, d_out=8, num_heads=2, context_length=6)
    restored.load_state_dict(torch.load(stream, weights_only=True))
    x = torch.randn(2, 5, 8)
    assert rel_err(restored(x), module(x)) <= SAME_FUNCTION_TOL
