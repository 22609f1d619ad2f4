"""The FLOP formula: a hand-computed case, and agreement with torch.utils.flop_counter on dense attention."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnlab.bench import attention_flops
from attnlab.registry import build


def test_hand_computed_case():
    # b=1, t=2, d=2, h=1: projections 8*1*2*2^2 = 64; causal attention 4*b*d*(pairs=3) = 24.
    assert attention_flops(batch=1, seq_len=2, d_model=2, num_heads=1) == 64 + 24
    assert attention_flops(batch=1, seq_len=2, d_model=2, num_heads=1, mode="backward") == 3 * 88
    # Full (non-causal) attention counts all t*t = 4 pairs: 4*1*2*4 = 32.
    assert attention_flops(batch=1, seq_len=2, d_model=2, num_heads=1, causal=False) == 64 + 32


def test_causal_count_is_about_half_the_dense_attention():
    kwargs = dict(batch=2, seq_len=1024, d_model=64, num_heads=4)
    projections = 8 * 2 * 1024 * 64 * 64
    causal = attention_flops(**kwargs) - projections
    dense = attention_flops(**kwargs, causal=False) - projections
    assert causal / dense == pytest.approx((1024 + 1) / (2 * 1024))


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_dense_count_matches_torch_flop_counter(mode):
    """einsum computes the full score matrix with plain matmuls: exactly what FlopCounterMode counts."""
    b, t, d, h = 2, 16, 32, 4
    module = build("einsum", d_in=d, d_out=d, num_heads=h, context_length=t)
    x = torch.randn(b, t, d, requires_grad=mode == "backward")
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        if mode == "backward":
            out.sum().backward()
    assert counter.get_total_flops() == attention_flops(
        batch=b, seq_len=t, d_model=d, num_heads=h, mode=mode, causal=False
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        attention_flops(batch=1, seq_len=2, d_model=4, num_heads=2, mode="sideways")
    with pytest.raises(ValueError, match="divisible"):
        attention_flops(batch=1, seq_len=2, d_model=6, num_heads=4)
