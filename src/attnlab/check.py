"""Prove that every implementation computes the same function: outputs and gradients against float64.

Each implementation gets the same :class:`~attnlab.weights.AttentionWeights` and the same input;
its output, input gradient and weight gradients are compared with :func:`attnlab.reference.reference_attention`.
``attnlab check`` prints the result of :func:`run_check` (a validated :class:`CheckConfig`) as a table;
:func:`check_implementations` is the same with keyword arguments.

Everything is validated before any work: sizes, seed, device, the implementation names, and the memory the
run needs (the float64 reference keeps ``t x t`` values per head for its gradients; see
:mod:`attnlab.memory_guard`), so a run that cannot fit is refused with the estimate instead of being killed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from .devices import resolve_device
from .implementations import IMPLEMENTATIONS
from .implementations.base import check_layer_options, requested_features
from .memory_guard import attention_bytes, reference_bytes, require_memory
from .reference import reference_attention
from .registry import build, check_selection, get_implementation, unsupported_reason
from .validate import check_positive_int, check_seed
from .weights import AttentionWeights

__all__ = [
    "FORWARD_TOL",
    "GRAD_TOL",
    "CheckConfig",
    "CheckResult",
    "check_implementations",
    "max_abs_error",
    "run_check",
]

#: Relative tolerances for float32 against the float64 reference. float32 has a unit roundoff of 6e-8;
#: the dot products here (length <= a few hundred) accumulate at most ~1e-6 of relative error, so 1e-5
#: leaves ample headroom, while a wrong mask, scale or head split errs by 1e-2 or more. Gradients pass
#: through one more chain of products, hence 1e-4.
FORWARD_TOL = 1e-5
GRAD_TOL = 1e-4


@dataclass(frozen=True)
class CheckConfig:
    """What ``attnlab check`` compares: ``impls`` (None: every registered one) at one size, float32 on
    ``device`` against the float64 reference on the CPU."""

    impls: tuple[str, ...] | None = None
    batch: int = 2
    seq_len: int = 7
    d_in: int = 32
    d_out: int = 32
    num_heads: int = 4
    qkv_bias: bool = True
    seed: int = 0
    device: str = "cpu"
    num_kv_heads: int | None = None  # the modules' options: grouped-query attention (1: multi-query),
    window: int | None = None  # a sliding window,
    softcap: float | None = None  # softcapping,
    sinks: bool = False  # learned sinks (random here); an implementation that cannot do one is "skipped"

    def __post_init__(self) -> None:
        check_selection(self.impls)
        for name in ("batch", "seq_len", "d_in", "d_out", "num_heads"):
            check_positive_int(name, getattr(self, name))
        if self.d_out % self.num_heads != 0:
            raise ValueError(f"d_out {self.d_out} is not divisible by num_heads {self.num_heads}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {self.qkv_bias!r}")
        check_seed(self.seed)
        resolve_device(self.device)  # absent or unknown device: ValueError
        # The modules' own checks of their options, before any work (build() would make them too, later).
        check_layer_options(self.num_heads, self.num_kv_heads, self.window, self.softcap, self.sinks)

    @property
    def options(self) -> dict:
        """The modules' (and the reference's) attention options, as constructor keywords."""
        return {"num_kv_heads": self.num_kv_heads, "window": self.window, "softcap": self.softcap, "sinks": self.sinks}

    @property
    def impl_names(self) -> tuple[str, ...]:
        """The implementations to check: the given ones, or every registered one (read at call time)."""
        return self.impls if self.impls is not None else tuple(IMPLEMENTATIONS)

    def require_memory(self) -> None:
        """Raise ``ValueError`` naming the estimate and the free memory when this check cannot fit.

        The reference's autograd graph is freed by its backward pass before the implementations run, so on
        the CPU the peak is the larger of the two; on a GPU the implementations' memory is the device's.
        """
        sizes = {"batch": self.batch, "seq_len": self.seq_len, "d_in": self.d_in, "d_out": self.d_out}
        reference = reference_bytes(**sizes, num_heads=self.num_heads)
        implementation = max(
            attention_bytes(name, **sizes, num_heads=self.num_heads, element_size=4, backward=True)
            for name in self.impl_names
        )
        device = resolve_device(self.device)
        what = (
            f"this check (batch {self.batch}, seq_len {self.seq_len}, d_in {self.d_in}, d_out {self.d_out}, "
            f"num_heads {self.num_heads})"
        )
        hint = "; the float64 reference and the plain attention paths grow with batch * num_heads * seq_len**2"
        if device.type == "cpu":
            require_memory(max(reference, implementation), device, what, hint)
        else:
            require_memory(reference, "cpu", f"the float64 reference of {what}", hint)
            require_memory(implementation, device, what, hint)


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


def run_check(config: CheckConfig, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Check each of ``config``'s implementations in float32 against the float64 reference on one random input.

    ``on_result`` is told each result as soon as it is known (for progress displays).
    """
    config.require_memory()
    generator = torch.Generator().manual_seed(config.seed)
    # Without num_kv_heads and sinks, these are exactly the weights that earlier versions drew.
    weights = AttentionWeights.random(
        config.d_in,
        config.d_out,
        config.qkv_bias,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        sinks=config.sinks,
        generator=generator,
    )
    x = torch.randn(config.batch, config.seq_len, config.d_in, generator=generator)  # (b, t, d_in)
    upstream = torch.randn(config.batch, config.seq_len, config.d_out, generator=generator)  # (b, t, d_out)

    # The reference: float64 leaves, so autograd gives reference gradients for x and every weight.
    ref_x = x.to(torch.float64).requires_grad_()
    ref_w = weights.to(dtype=torch.float64)
    ref_w = ref_w.map_tensors(lambda t: t.requires_grad_())
    reference_options = {"num_kv_heads": config.num_kv_heads, "window": config.window, "softcap": config.softcap}
    ref_out = reference_attention(ref_x, ref_w, config.num_heads, **reference_options)  # (b, t, d_out)
    (ref_out * upstream.to(torch.float64)).sum().backward()
    ref_w_grads = ref_w.map_tensors(lambda t: t.grad)

    device = str(resolve_device(config.device))
    results = []
    for name in config.impl_names:
        try:
            result = _check_one(
                name, weights, x, upstream, ref_out, ref_x.grad, ref_w_grads, config.num_heads, device, config.options
            )
        except NotImplementedError as error:  # a device limit not declared up front (e.g. flex's CPU sinks)
            result = CheckResult(name, "skipped", note=str(error).splitlines()[0])
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def check_implementations(
    names: Sequence[str] | None = None,
    *,
    batch: int = CheckConfig.batch,
    seq_len: int = CheckConfig.seq_len,
    d_in: int = CheckConfig.d_in,
    d_out: int = CheckConfig.d_out,
    num_heads: int = CheckConfig.num_heads,
    qkv_bias: bool = CheckConfig.qkv_bias,
    seed: int = CheckConfig.seed,
    device: str = CheckConfig.device,
    on_result: Callable[[CheckResult], None] | None = None,
    num_kv_heads: int | None = None,
    window: int | None = None,
    softcap: float | None = None,
    sinks: bool = False,
) -> list[CheckResult]:
    """:func:`run_check` with keyword arguments; ``names=None`` checks every registered implementation."""
    config = CheckConfig(
        impls=None if names is None else tuple(names),
        batch=batch,
        seq_len=seq_len,
        d_in=d_in,
        d_out=d_out,
        num_heads=num_heads,
        qkv_bias=qkv_bias,
        seed=seed,
        device=device,
        num_kv_heads=num_kv_heads,
        window=window,
        softcap=softcap,
        sinks=sinks,
    )
    return run_check(config, on_result)


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
    if get_implementation(name).capabilities.needs_d_in_equal_d_out and weights.d_in != weights.d_out:
        return CheckResult(name, "skipped", note=f"needs d_in == d_out (got {weights.d_in} and {weights.d_out})")
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
