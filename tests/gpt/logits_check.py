"""A limit relative to the size of what is compared, for the GPT tests' logits (not a test module)."""

import torch


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """max |actual - expected| <= rel * max |expected|: a limit relative to the logits' own size, so that
    float32 rounding (which grows with that size and differs between CPUs' matmul kernels) is allowed for."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = (actual.detach().double() - expected.detach().double()).abs().max().item()
    scale = expected.detach().double().abs().max().item()
    assert error <= rel * scale, f"max error {error:.3g} > {rel:g} x max |expected| {scale:.3g}"
