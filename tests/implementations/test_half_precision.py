"""Half precision: every implementation stays finite and accurate where float16 scores overflow and where
bfloat16 (or float16) rounds large logits, against the float64 reference on the same rounded inputs and weights.

The two inputs are built so that the reference is well conditioned and every error is the implementation's
own rounding. In both, W_query = W_key = identity (zero biases) and the inputs are exact in either dtype, so
the queries and keys are exact too:

- ``overflow``: inputs are multiples of 8 up to 512, so every q.k is an integer multiple of 64 up to 2.1e6:
  exact in float32, far beyond float16's 65504. Distinct scores differ by at least 64 / sqrt(8) = 22.6 after
  scaling, so the softmax is one-hot or an exact tie, and float32's rounding of such logits (~0.1) moves no
  weight.
- ``large_logits``: in every head, four features are the constant 90 and four are small multiples of 1/8, so
  the logits sit near 1.1e4 and differ by O(1): bfloat16 keeps them to a multiple of 64, float16 to a multiple
  of 8. W_value reads only the small features, so the output is made of the differences the softmax resolves.

Cores that computed the scores in the input dtype gave NaN on ``overflow`` in float16 and errors of 10% to 100%
of the output's magnitude elsewhere; they now compute scores and softmax in float32
(:mod:`attnlab.implementations.precision`).
"""

from __future__ import annotations

import pytest
import torch
from impl_cases import scaled_error

from attnlab import IMPLEMENTATIONS, AttentionWeights, build
from attnlab.implementations.kv_cache import LayerKVCache
from attnlab.reference import reference_attention
from attnlab.registry import unsupported_reason

D, HEADS, T, BATCH = 16, 2, 6, 2  # head_dim 8
HALF = [torch.float16, torch.bfloat16]
FIELDS = ("W_query", "W_key", "W_value", "W_out", "b_out", "b_query", "b_key", "b_value")


def exact_scores_weights(gen: torch.Generator, value_features: torch.Tensor) -> AttentionWeights:
    """Identity query/key projections with zero biases; random value (on ``value_features``) and output ones."""
    rand = AttentionWeights.random(D, D, qkv_bias=True, generator=gen)
    eye, zeros = torch.eye(D), torch.zeros(D)
    return AttentionWeights(
        W_query=eye,
        W_key=eye,
        W_value=rand.W_value * value_features,  # (d_out, d_in): columns of the other features zeroed
        W_out=rand.W_out,
        b_out=rand.b_out,
        b_query=zeros,
        b_key=zeros,
        b_value=rand.b_value,
    )


def overflow(gen: torch.Generator) -> tuple[AttentionWeights, torch.Tensor]:
    x = torch.randint(-64, 65, (BATCH, T, D), generator=gen) * 8.0  # (b, t, d_in), |x| <= 512
    return exact_scores_weights(gen, torch.ones(D)), x


def large_logits(gen: torch.Generator) -> tuple[AttentionWeights, torch.Tensor]:
    small = (torch.arange(D) % (D // HEADS) >= D // HEADS // 2).float()  # (d_in,): last half of each head
    x = torch.where(small.bool(), torch.randint(-16, 17, (BATCH, T, D), generator=gen) / 8, 90.0)  # (b, t, d_in)
    return exact_scores_weights(gen, small), x


CASES = {"overflow": overflow, "large_logits": large_logits}


def runnable(name: str, mode: str = "forward") -> None:
    """Skip an implementation this machine cannot run here (e.g. flex's backward on the CPU)."""
    if (reason := unsupported_reason(name, "cpu", mode)) is not None:
        pytest.skip(f"{name} {reason}")


def half_module(name: str, weights: AttentionWeights, dtype: torch.dtype) -> torch.nn.Module:
    module = build(name, d_in=D, d_out=D, num_heads=HEADS, context_length=T, qkv_bias=weights.qkv_bias)
    module = module.to(dtype).eval()  # eval, no gradients: nn.MultiheadAttention's native fast path
    module.set_weights(weights.to(dtype=dtype))
    return module


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


# Outputs: error <= 2 eps of the dtype times the reference's largest value. Each output is rounded to the
# dtype at least twice (context vectors, output projection) and the written-out cores also round the
# attention weights for their product with the values: eps/2 each. Measured on an Intel Xeon: at most 0.64 eps
# for every implementation at these seeds, 0.86 eps over eight seeds; the cores that computed scores in the
# input dtype gave NaN, 98 eps (bfloat16) or 460 eps (float16).
OUTPUT_EPS = 2.0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_output_is_finite_and_accurate(name, dtype, case):
    runnable(name)
    weights, x = CASES[case](torch.Generator().manual_seed(0))
    x, weights = x.to(dtype), weights.to(dtype=dtype)  # what the module holds; the reference starts there
    with torch.no_grad():
        out = half_module(name, weights, dtype)(x)  # (b, t, d_out)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    ref = reference_attention(x, weights, HEADS)  # float64
    assert scaled_error(out, ref) <= OUTPUT_EPS * eps(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_random_weights_at_an_overflowing_scale_stay_finite(name, dtype):
    # The plain symptom: random weights, inputs of size ~400, float16 scores beyond 65504.
    runnable(name)
    gen = torch.Generator().manual_seed(1)
    weights = AttentionWeights.random(D, D, qkv_bias=True, generator=gen)
    x = (torch.randn(BATCH, T, D, generator=gen) * 400).to(dtype)  # (b, t, d_in)
    module = half_module(name, weights, dtype)
    with torch.no_grad():
        assert torch.isfinite(module(x)).all()  # eval without gradients (nn.MultiheadAttention's fast path)
    if unsupported_reason(name, "cpu", "backward") is None:
        assert torch.isfinite(module(x.requires_grad_())).all()  # the path that records gradients


# Input gradient on ``large_logits``: FlashAttention's rule, error <= 3x that of PyTorch's sdpa implementation
# in the same dtype (both against float64), plus one eps of the reference gradient as a floor. Measured over
# eight seeds: at most 0.78 of this limit (flash_torch, float16); the written-out cores, whose softmax backward
# now runs in float32, stay below sdpa's own error. The weight gradients are checked for finiteness only:
# W_query's sums dscore_j * k_j with k_j = 90 + small, a cancellation that costs sdpa itself up to 130 eps in
# half precision, so no eps-sized limit fits every implementation. On ``overflow`` the softmax is one-hot, its
# gradient ~0, and PyTorch's float32 SDPA backward (inside torch_mha_fast) errs by ~1e-2 there: finiteness only.
GRAD_RULE = 3.0


def half_gradients(name, weights, x, upstream, dtype):
    module = half_module(name, weights, dtype)
    x = x.clone().requires_grad_()
    out = module(x)  # (b, t, d_out)
    (out.float() * upstream).sum().backward()  # the loss in float32, the graph in the dtype
    return x.grad, module.get_weight_grads()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_gradients_are_finite_and_the_input_gradient_accurate(name, dtype, case):
    runnable(name, "backward")
    gen = torch.Generator().manual_seed(2)
    weights, x = CASES[case](gen)
    x, weights = x.to(dtype), weights.to(dtype=dtype)
    upstream = torch.randn(BATCH, T, D, generator=gen)  # (b, t, d_out) dL/d(out)

    x_grad, weight_grads = half_gradients(name, weights, x, upstream, dtype)
    assert torch.isfinite(x_grad).all()
    for field in FIELDS:
        assert torch.isfinite(getattr(weight_grads, field)).all(), field
    if case == "overflow":
        return  # see above: finiteness only

    ref_x = x.double().requires_grad_()
    (reference_attention(ref_x, weights, HEADS) * upstream.double()).sum().backward()
    sdpa_x_grad, _ = half_gradients("sdpa", weights, x, upstream, dtype)
    limit = GRAD_RULE * scaled_error(sdpa_x_grad, ref_x.grad) + eps(dtype)
    assert scaled_error(x_grad, ref_x.grad) <= limit


KV_CACHE_IMPLS = [name for name, cls in IMPLEMENTATIONS.items() if cls.supports_kv_cache() and name != "flex"]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", KV_CACHE_IMPLS)  # flex compiles per shape; its cached path is fused_qkv's
def test_cached_decoding_is_accurate(name, dtype):
    runnable(name)
    weights, x = large_logits(torch.Generator().manual_seed(3))
    x, weights = x.to(dtype), weights.to(dtype=dtype)
    module = half_module(name, weights, dtype)
    cache = LayerKVCache(max_tokens=T)
    with torch.no_grad():
        chunks = [module.forward_cached(x[:, start:end], cache) for start, end in ((0, 4), (4, 5), (5, T))]
    out = torch.cat(chunks, dim=1)  # (b, t, d_out)
    assert torch.isfinite(out).all()
    assert scaled_error(out, reference_attention(x, weights, HEADS)) <= OUTPUT_EPS * eps(dtype)
