"""The attention workload: one implementation, one mode, one set of sizes, built the same way everywhere.

:class:`AttentionCase` is a small picklable description; :func:`prepare` turns it into a module with
the seed's weights (via ``set_weights``, so every implementation computes the same function) and an
input, plus ``step``, the call that the benchmark times and whose memory it measures. The memory worker
process rebuilds the same case from the description (:func:`make_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..implementations.base import Mode
from ..memory_guard import attention_bytes
from ..registry import build
from ..weights import AttentionWeights
from .devices import resolve_dtype
from .flops import attention_flops
from .variant import PLAIN, AttentionVariant

__all__ = ["AttentionCase", "PreparedCase", "case_inputs", "make_step", "prepare"]


@dataclass(frozen=True)
class AttentionCase:
    """Implementation ``impl`` in ``mode`` on ``device``/``dtype`` at one size; ``compiled`` wraps the
    module in ``torch.compile``."""

    impl: str
    mode: Mode
    compiled: bool
    device: str
    dtype: str
    batch: int
    seq_len: int
    d_model: int
    num_heads: int
    seed: int
    variant: AttentionVariant = PLAIN

    @property
    def memory_bytes(self) -> int:
        """Upper estimate of the peak memory of one step (see :mod:`attnlab.memory_guard`)."""
        return attention_bytes(
            self.impl,
            batch=self.batch,
            seq_len=self.seq_len,
            d_in=self.d_model,
            d_out=self.d_model,
            num_heads=self.num_heads,
            element_size=resolve_dtype(self.dtype).itemsize,
            backward=self.mode == "backward",
        )

    @property
    def flops(self) -> float:
        return attention_flops(
            batch=self.batch,
            seq_len=self.seq_len,
            d_model=self.d_model,
            num_heads=self.num_heads,
            mode=self.mode,
            num_kv_heads=self.variant.num_kv_heads,
            window=self.variant.window,
            seq_lens=self.variant.seq_lens(self.seq_len),
        )


@dataclass
class PreparedCase:
    """A built case: ``step()`` runs one forward (no autograd) or one forward + backward and returns
    the output (detached)."""

    module: nn.Module
    x: torch.Tensor  # (b, t, d_model)
    step: Callable[[], torch.Tensor]


def case_inputs(case: AttentionCase) -> tuple[AttentionWeights, torch.Tensor]:
    """The seed's weights and input (float32, CPU): the same for every implementation at this size."""
    generator = torch.Generator().manual_seed(case.seed)
    weights = AttentionWeights.random(
        case.d_model,
        case.d_model,
        generator=generator,
        num_heads=case.num_heads,
        num_kv_heads=case.variant.num_kv_heads,
        sinks=case.variant.sinks,
    )
    x = torch.randn(case.batch, case.seq_len, case.d_model, generator=generator)  # (b, t, d_model)
    return weights, x


def prepare(case: AttentionCase) -> PreparedCase:
    """Build the module (eval mode, the seed's weights, on the case's device and dtype) and its step."""
    device, dtype = torch.device(case.device), resolve_dtype(case.dtype)
    weights, x = case_inputs(case)
    module = build(
        case.impl,
        d_in=case.d_model,
        d_out=case.d_model,
        num_heads=case.num_heads,
        context_length=case.seq_len,
        **case.variant.module_options(),
    )
    module.set_weights(weights)
    module = module.to(device=device, dtype=dtype).eval()  # dropout is 0 anyway; eval allows fast paths
    runner: nn.Module = torch.compile(module) if case.compiled else module
    x = x.to(device=device, dtype=dtype)  # (b, t, d_model)
    packing = {} if case.variant.packed_len is None else {"seq_lens": case.variant.seq_lens(case.seq_len)}

    if case.mode == "forward":

        def step() -> torch.Tensor:
            with torch.no_grad():
                return runner(x, **packing)  # (b, t, d_model)

    else:
        x_leaf = x.clone().requires_grad_()  # in a model, attention's input needs a gradient too

        def step() -> torch.Tensor:
            out = runner(x_leaf, **packing)  # (b, t, d_model)
            out.sum().backward()
            # Drop the gradients after use: each call allocates them afresh, as a training step does, and
            # the memory meter (which reads the allocation above what exists before a call) counts them.
            module.zero_grad(set_to_none=True)
            x_leaf.grad = None
            return out.detach()

    return PreparedCase(module=runner, x=x, step=step)


def make_step(case: AttentionCase) -> Callable[[], torch.Tensor]:
    """``prepare(case).step``: picklable as ``functools.partial(make_step, case)`` for the memory worker."""
    return prepare(case).step
