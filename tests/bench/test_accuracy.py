"""The cheap accuracy check: a causal prefix of one sequence, exact where it should be, loud when wrong."""

import torch

from attnlab.bench.accuracy import TOLERANCES, output_error, reference_prefix
from attnlab.reference import reference_attention
from attnlab.registry import build
from attnlab.weights import AttentionWeights


def _setup(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = AttentionWeights.random(16, 16, generator=generator)
    x = torch.randn(3, 12, 16, generator=generator)  # (b, t, d)
    return weights, x


def test_prefix_equals_the_full_reference_prefix():
    """Causality: the first t' outputs of the full sequence equal the outputs of the first t' tokens."""
    weights, x = _setup()
    full = reference_attention(x, weights, num_heads=4)  # (3, 12, 16)
    prefix = reference_prefix(x, weights, num_heads=4, max_tokens=5)  # (1, 5, 16)
    assert prefix.shape == (1, 5, 16)
    # Both float64 and computed the same way on the same numbers, up to the (b, t) slicing: 1e-12.
    torch.testing.assert_close(prefix, full[:1, :5], rtol=0, atol=1e-12)


def test_correct_implementation_passes_and_non_causal_output_fails():
    weights, x = _setup()
    module = build("sdpa", d_in=16, d_out=16, num_heads=4, context_length=12)
    module.set_weights(weights)
    reference = reference_prefix(x, weights, num_heads=4, max_tokens=8)
    with torch.no_grad():
        good = module(x)  # (3, 12, 16)
        # Reversing the tokens breaks causality: token 0 now sees everything.
        bad = module(x.flip(1)).flip(1)  # (3, 12, 16)
    assert output_error(good, reference) < TOLERANCES["float32"]
    assert output_error(bad, reference) > TOLERANCES["bfloat16"]  # far above even the loosest tolerance
