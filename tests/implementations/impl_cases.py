"""Shared helpers for the implementation tests: build any implementation with given weights, and the
float64 reference run that every comparison is made against."""

from dataclasses import dataclass

import torch

from attnlab import AttentionWeights
from attnlab.reference import reference_attention
from attnlab.registry import available_implementations, build, get_implementation

# Everything that runs on this CPU, forward; FlexAttention compiles per input shape (seconds each), so
# the tests that sweep many shapes leave it out and cover it on a few fixed shapes.
CPU_IMPLS = available_implementations("cpu", "forward")


def supports_backward(name: str) -> bool:
    return get_implementation(name).capabilities.unsupported_reason("cpu", "backward") is None


def needs_square(name: str) -> bool:
    return get_implementation(name).capabilities.needs_d_in_equal_d_out


@dataclass
class Case:
    batch: int
    seq_len: int
    d_in: int
    d_out: int
    num_heads: int
    qkv_bias: bool
    context_length: int

    def __str__(self):
        return (
            f"b{self.batch}-t{self.seq_len}-din{self.d_in}-dout{self.d_out}-h{self.num_heads}"
            f"-bias{int(self.qkv_bias)}-ctx{self.context_length}"
        )


def make_module(name, weights: AttentionWeights, num_heads: int, context_length: int, dropout=0.0):
    module = build(
        name,
        d_in=weights.d_in,
        d_out=weights.d_out,
        num_heads=num_heads,
        context_length=context_length,
        dropout=dropout,
        qkv_bias=weights.qkv_bias,
    )
    module.set_weights(weights)
    return module


def compare_with_reference(name: str, case: Case, seed: int = 0):
    """Run implementation ``name`` in float32 and the float64 reference; assert outputs and gradients agree.

    Tolerances: float32 (unit roundoff 6e-8) against float64 at unit-scale inputs with reductions of at
    most a few dozen terms lands near 1e-7; atol=2e-5 / rtol=1e-4 leaves two orders of headroom, while a
    wrong mask, scale or head split errs by 1e-2 or more. Gradients use 5x that (one more chain of products).
    """
    gen = torch.Generator().manual_seed(seed)
    weights = AttentionWeights.random(case.d_in, case.d_out, case.qkv_bias, generator=gen)
    x = torch.randn(case.batch, case.seq_len, case.d_in, generator=gen)  # (b, t, d_in)
    upstream = torch.randn(case.batch, case.seq_len, case.d_out, generator=gen)  # dL/d(out)

    ref_x = x.double().requires_grad_()
    ref_w = weights.to(dtype=torch.float64).map_tensors(lambda t: t.requires_grad_())
    ref_out = reference_attention(ref_x, ref_w, case.num_heads)
    (ref_out * upstream.double()).sum().backward()

    module = make_module(name, weights, case.num_heads, case.context_length).eval()
    if not supports_backward(name):
        with torch.no_grad():
            out = module(x)
        torch.testing.assert_close(out.double(), ref_out.detach(), atol=2e-5, rtol=1e-4)
        return
    x = x.clone().requires_grad_()
    out = module(x)
    assert out.shape == (case.batch, case.seq_len, case.d_out)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out.detach(), atol=2e-5, rtol=1e-4)
    (out * upstream).sum().backward()
    torch.testing.assert_close(x.grad.double(), ref_x.grad, atol=1e-4, rtol=5e-4)
    grads = module.get_weight_grads()
    for field in ("W_query", "W_key", "W_value", "W_out", "b_out", "b_query", "b_key", "b_value"):
        expected = getattr(ref_w, field)
        if expected is None:
            assert getattr(grads, field) is None
            continue
        torch.testing.assert_close(
            getattr(grads, field).double(), expected.grad, atol=1e-4, rtol=5e-4, msg=f"{name} d{field}"
        )
