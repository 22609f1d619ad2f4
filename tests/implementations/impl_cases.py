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


def scaled_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """max |actual - expected| / scale, in float64; ``scale`` defaults to max |expected|."""
    expected = expected.detach().double()
    if scale is None:
        scale = expected.abs().max().item()
    return (actual.detach().double() - expected).abs().max().item() / scale


# Tolerances of float32 against the float64 reference, as a fraction of the reference's magnitude.
# Measured on an Intel Xeon over the fixed shapes and 400 random ones per implementation: at most 7e-7 for
# outputs and 6e-7 for gradients (float32's unit roundoff is 6e-8; reductions here have a few dozen terms).
# 1e-5 leaves 14x headroom for other CPUs' kernels (the errors scale with the magnitudes, which the division
# removes), while a wrong mask, scale or head split errs by 1e-2 or more.
OUTPUT_TOL = 1e-5
GRAD_TOL = 1e-5


def compare_with_reference(name: str, case: Case, seed: int = 0):
    """Run implementation ``name`` in float32 and the float64 reference; assert outputs and gradients agree.

    Errors are scaled (see OUTPUT_TOL, GRAD_TOL): the output's by the reference output's largest value; every
    gradient's (input and weights) by the largest reference gradient of any of them. The gradients are all
    products of one upstream gradient with O(1) inputs and weights, so their rounding errors share that
    scale; one gradient can be tiny or exactly zero by cancellation (b_key's always is: a bias added to every
    key shifts a query's scores equally; W_query's when each query sees a single key), and its own maximum
    would then divide float32 noise by ~0.
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
        assert scaled_error(out, ref_out) <= OUTPUT_TOL, f"{name} output"
        return
    x = x.clone().requires_grad_()
    out = module(x)
    assert out.shape == (case.batch, case.seq_len, case.d_out)
    assert out.dtype == torch.float32
    assert scaled_error(out, ref_out) <= OUTPUT_TOL, f"{name} output"
    (out * upstream).sum().backward()

    grads = module.get_weight_grads()
    fields = ("W_query", "W_key", "W_value", "W_out", "b_out", "b_query", "b_key", "b_value")
    ref_grads = {"x": ref_x.grad} | {f: getattr(ref_w, f).grad for f in fields if getattr(ref_w, f) is not None}
    grad_scale = max(g.abs().max().item() for g in ref_grads.values())
    for field in fields:
        if getattr(ref_w, field) is None:
            assert getattr(grads, field) is None, f"{name} d{field}"
    actual = {"x": x.grad} | {f: getattr(grads, f) for f in ref_grads if f != "x"}
    for field, expected in ref_grads.items():
        assert scaled_error(actual[field], expected, grad_scale) <= GRAD_TOL, f"{name} d{field}"
