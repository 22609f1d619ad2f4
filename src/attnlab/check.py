"""Prove that every implementation computes the same function: outputs and gradients against float64.

Each implementation gets the same :class:`~attnlab.weights.AttentionWeights` and the same input;
its output, input gradient and weight gradients are compared with :func:`attnlab.reference.reference_attention`.
``attnlab check`` prints the result of :func:`check_implementations` as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from .implementations.base import requested_features
from .reference import reference_attention
from .registry import build, get_implementation, unsupported_reason
from .weights import AttentionWeights

__all__ = ["FORWARD_TOL", "GRAD_TOL", "CheckResult", "check_implementations", "max_abs_error"]

#: Relative tolerances for float32 against the float64 reference. float32 has a unit roundoff of 6e-8;
#: the dot products here (length <= a few hundred) accumulate at most ~1e-6 of relative error, so 1e-5
#: leaves ample headroom, while a wrong mask, scale or head split errs by 1e-2 or more. Gradients pass
#: through one more chain of products, hence 1e-4.
FORWARD_TOL = 1e-5
GRAD_TOL = 1e-4


@dataclass
class CheckResult:
    """One implementation's errors (max abs error divided by max(1, max |reference|))."""

    name: str
    status: str  # "pass", "fail" or "skipped"
    forward_err: float | None = None
    input_grad_err: float | None = None
    weight_grad_err: float | None = None
    note: str = ""


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to max(1, max |expected|), computed in float64."""
    expected = expected.detach().to(torch.float64).cpu()
    diff = (actual.detach().to(torch.float64).cpu() - expected).abs().max().item()
    return diff / max(1.0, expected.abs().max().item())


def _weights_error(actual: AttentionWeights, expected: AttentionWeights) -> float:
    """The largest error over every field the reference has (``sinks`` included); a field that the
    implementation lacks, or has where the reference has none, is an infinite error, never skipped."""
    errors = []
    for f in fields(AttentionWeights):
        got, want = getattr(actual, f.name), getattr(expected, f.name)
        if (got is None) != (want is None):
            errors.append(float("inf"))
        elif want is not None:
            errors.append(max_abs_error(got, want))
    return max(errors)


def check_implementations(
    names: Sequence[str],
    *,
    batch: int = 2,
    seq_len: int = 7,
    d_in: int = 32,
    d_out: int = 32,
    num_heads: int = 4,
    qkv_bias: bool = True,
    seed: int = 0,
    device: str = "cpu",
    on_result: Callable[[CheckResult], None] | None = None,
    num_kv_heads: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: bool = False,
) -> list[CheckResult]:
    """Check each named implementation in float32 against the float64 reference on one random input.

    ``num_kv_heads``, ``window``, ``softcap`` and ``sinks`` are the modules' options (grouped-query attention, a
    sliding window, softcapping, learned sinks, here random); an implementation that cannot do one of them is
    a "skipped" row saying so.
    """
    for name in names:
        get_implementation(name)  # unknown names fail before any work
    generator = torch.Generator().manual_seed(seed)
    # Without num_kv_heads and sinks, these are exactly the weights that earlier versions drew.
    weights = AttentionWeights.random(
        d_in, d_out, qkv_bias, num_heads=num_heads, num_kv_heads=num_kv_heads, sinks=sinks, generator=generator
    )
    x = torch.randn(batch, seq_len, d_in, generator=generator)  # (b, t, d_in)
    upstream = torch.randn(batch, seq_len, d_out, generator=generator)  # (b, t, d_out) gradient of the loss

    # The reference: float64 leaves, so autograd gives reference gradients for x and every weight.
    ref_x = x.to(torch.float64).requires_grad_()
    ref_w = weights.to(dtype=torch.float64)
    ref_w = ref_w.map_tensors(lambda t: t.requires_grad_())
    options = {"num_kv_heads": num_kv_heads, "window": window, "softcap": softcap}
    ref_out = reference_attention(ref_x, ref_w, num_heads, **options)  # (b, t, d_out)
    (ref_out * upstream.to(torch.float64)).sum().backward()
    ref_w_grads = ref_w.map_tensors(lambda t: t.grad)

    results = []
    for name in names:
        result = _check_one(
            name, weights, x, upstream, ref_out, ref_x.grad, ref_w_grads, num_heads, device, options | {"sinks": sinks}
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _check_one(
    name: str,
    weights: AttentionWeights,
    x: torch.Tensor,
    upstream: torch.Tensor,
    ref_out: torch.Tensor,
    ref_x_grad: torch.Tensor,
    ref_w_grads: AttentionWeights,
    num_heads: int,
    device: str,
    options: dict,
) -> CheckResult:
    device_type = torch.device(device).type
    features = requested_features(num_heads=num_heads, **options)
    if (reason := unsupported_reason(name, device_type, "forward", features)) is not None:
        return CheckResult(name, "skipped", note=reason)
    module = build(
        name,
        d_in=weights.d_in,
        d_out=weights.d_out,
        num_heads=num_heads,
        context_length=x.shape[1],
        qkv_bias=weights.qkv_bias,
        **options,
    ).to(device)
    module.eval()
    module.set_weights(weights.to(device=device))
    x = x.to(device)

    no_backward = unsupported_reason(name, device_type, "backward")
    if no_backward is not None:
        with torch.no_grad():
            out = module(x)
        result = CheckResult(name, "pass", forward_err=max_abs_error(out, ref_out), note=f"gradients: {no_backward}")
    else:
        x = x.clone().requires_grad_()
        out = module(x)
        (out * upstream.to(device)).sum().backward()
        result = CheckResult(
            name,
            "pass",
            forward_err=max_abs_error(out, ref_out),
            input_grad_err=max_abs_error(x.grad, ref_x_grad),
            weight_grad_err=_weights_error(module.get_weight_grads(), ref_w_grads),
        )
    grad_errs = [e for e in (result.input_grad_err, result.weight_grad_err) if e is not None]
    if not result.forward_err <= FORWARD_TOL or not all(e <= GRAD_TOL for e in grad_errs):
        result.status = "fail"
    return result
