"""Core attention functions on (batch, heads, tokens, head_dim) tensors, registered by name.

Every backend is called the same way::

    out = BACKENDS["naive"](q, k, v, causal=True, scale=None, window=None, softcap=None, sinks=None,
                            alibi_slopes=None, seq_lens=None, kv_lens=None, return_lse=False, dropout_p=0.0)
    # q (b, h, t_q, d), k/v (b, h_kv, t_k, d) -> (b, h, t_q, d), or (out, lse) with return_lse=True

The keywords become one :class:`AttentionSpec` (exact semantics in :mod:`attnlab.backends.spec`);
``Backend.attend(q, k, v, spec)`` takes one directly, which is how a layer reuses its spec. Each backend
declares, in its own module, the optional features it does (``FEATURES``); asking a backend for one it
does not do is a ``ValueError`` naming the feature and the backends that can, raised before any work.
All follow one causal convention (bottom-right alignment, zeros for rows that see no key), documented in
:mod:`attnlab.backends.common`; the one exception is ``flex``, which refuses causal t_q > t_k with a clear
error (its block mask cannot express rows without keys). The multi-head modules in
:mod:`attnlab.implementations` own the projections and hand the core to one of these.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..availability import missing_packages_reason
from . import flash_decode_torch, flash_decode_triton, flash_torch, flash_triton, flex, naive, sdpa
from .common import causal_mask
from .paged_torch import paged_torch_attention
from .paged_triton import paged_triton_attention
from .spec import FEATURES, AttentionSpec

__all__ = ["BACKENDS", "FEATURES", "PAGED", "AttentionSpec", "Backend", "backends_with", "causal_mask"]

#: The name :func:`backends_with` takes for paged attention (``Backend.attend_paged``), beside :data:`FEATURES`.
PAGED = "paged"

AttentionOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """A registered attention core: the function, the optional features it does, and where it runs."""

    name: str
    fn: Callable[..., AttentionOutput]  # fn(q, k, v, spec, **extras), inputs already checked
    summary: str
    features: frozenset[str]  # names from FEATURES, declared in the backend's own module
    no_backward_on: tuple[str, ...] = ()  # device types without a backward pass
    requires: tuple[str, ...] = ()  # modules that must be importable
    device_reason: Callable[[str], str | None] | None = None  # why it cannot run on a device type (None: any)
    paged: Callable[..., AttentionOutput] | None = None  # paged(q, key_pages, value_pages, block_table, kv_lens, spec)

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = True,
        scale: float | None = None,
        window: int | None = None,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
        alibi_slopes: torch.Tensor | None = None,
        seq_lens: torch.Tensor | list[int] | tuple[int, ...] | None = None,
        kv_lens: torch.Tensor | None = None,
        return_lse: bool = False,
        dropout_p: float = 0.0,
    ) -> AttentionOutput:
        spec = AttentionSpec(
            causal=causal,
            scale=scale,
            window=window,
            softcap=softcap,
            sinks=sinks,
            alibi_slopes=alibi_slopes,
            seq_lens=seq_lens,
            kv_lens=kv_lens,
            return_lse=return_lse,
            dropout_p=dropout_p,
        )
        return self.attend(q, k, v, spec)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, **extras
    ) -> AttentionOutput:
        """Check the tensors against ``spec`` and this backend's features, then run it (``extras``: its tuning)."""
        if not isinstance(spec, AttentionSpec):
            raise ValueError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
        spec.check(q, k, v)
        self.check_features(spec.features(q, k))
        if extras and (unknown := sorted(set(extras) - set(self.tuning))):  # (read only when tuning is given)
            raise ValueError(
                f"the {self.name} backend takes no {', '.join(unknown)}; its tuning keywords: "
                f"{', '.join(self.tuning) or 'none'}"
            )
        return self.fn(q, k, v, spec, **extras)

    def attend_paged(
        self,
        q: torch.Tensor,
        key_pages: torch.Tensor,
        value_pages: torch.Tensor,
        block_table: torch.Tensor,
        kv_lens: torch.Tensor,
        spec: AttentionSpec,
        **extras,
    ) -> AttentionOutput:
        """Attention of q (b, h, t_q, d) over a paged KV cache (see :mod:`attnlab.backends.paged_torch`).

        ``key_pages``/``value_pages`` (num_blocks, h_kv, block_size, d), ``block_table`` int (b, max_blocks),
        ``kv_lens`` int (b,); forward only. ``extras``: the paged function's keywords (``check_values=False``
        skips the checks that read the table and lengths, a device sync). Backends without paged attention
        raise ``ValueError`` naming those with it.
        """
        if self.paged is None:
            raise ValueError(
                f"the {self.name} backend has no paged attention; backends that do: {', '.join(backends_with(PAGED))}"
            )
        if extras and (unknown := sorted(set(extras) - set(_keyword_only(self.paged)))):
            raise ValueError(
                f"the {self.name} backend's paged attention takes no {', '.join(unknown)}; its keywords: "
                f"{', '.join(_keyword_only(self.paged)) or 'none'}"
            )
        return self.paged(q, key_pages, value_pages, block_table, kv_lens, spec, **extras)

    @property
    def tuning(self) -> tuple[str, ...]:
        """The keyword-only tuning arguments of the backend's function (e.g. ``block_m``), read off its signature."""
        return _keyword_only(self.fn)

    def check_features(self, features: tuple[str, ...]) -> None:
        """Raise ``ValueError`` naming the first feature this backend does not do, and who does."""
        for feature in features:
            if feature not in self.features:
                able = backends_with(feature)
                raise ValueError(
                    f"the {self.name} backend does not support {feature}; backends that do: {', '.join(able) or 'none'}"
                )

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return missing_packages_reason(self.requires)

    def unsupported_reason(self, device_type: str, mode: str = "forward") -> str | None:
        """Why this backend cannot run on ``device_type`` in ``mode`` ("forward"/"backward"), or None when it can."""
        if (reason := self.unavailable_reason()) is not None:
            return reason
        if self.device_reason is not None and (reason := self.device_reason(device_type)) is not None:
            return reason
        if mode == "backward" and device_type in self.no_backward_on:
            return f"has no backward pass on {device_type}"
        return None


@functools.cache
def _keyword_only(fn: Callable[..., AttentionOutput]) -> tuple[str, ...]:
    parameters = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def backends_with(feature: str) -> list[str]:
    """Names of the registered backends that do ``feature`` (a name from :data:`FEATURES`, or :data:`PAGED`)."""
    if feature == PAGED:
        return [name for name, backend in BACKENDS.items() if backend.paged is not None]
    if feature not in FEATURES:
        raise ValueError(f"unknown attention feature {feature!r}; known: {', '.join(FEATURES)}")
    return [name for name, backend in BACKENDS.items() if feature in backend.features]


BACKENDS: dict[str, Backend] = {
    "naive": Backend(
        "naive", naive.naive_attention, "matmul, mask, softmax, matmul (the readable reference)", naive.FEATURES
    ),
    "sdpa": Backend(
        "sdpa", sdpa.sdpa_attention, "F.scaled_dot_product_attention with is_causal (fused kernels)", sdpa.SDPA_FEATURES
    ),
    "sdpa_mask": Backend(
        "sdpa_mask",
        sdpa.sdpa_mask_attention,
        "F.scaled_dot_product_attention with an explicit boolean mask",
        sdpa.SDPA_MASK_FEATURES,
    ),
    "flex": Backend(
        "flex",
        flex.flex_attention_backend,
        "compiled FlexAttention with a causal block mask",
        flex.FEATURES,
        no_backward_on=("cpu",),
    ),
    "flash_torch": Backend(
        "flash_torch",
        flash_torch.flash_torch_attention,
        "FlashAttention-2 in plain PyTorch: tiled online softmax, recomputing backward",
        flash_torch.FEATURES,
        paged=paged_torch_attention,
    ),
    "flash_triton": Backend(
        "flash_triton",
        flash_triton.flash_triton_attention,
        "FlashAttention-2 Triton kernels (CUDA; the CPU only under TRITON_INTERPRET=1)",
        flash_triton.FEATURES,
        requires=("triton",),
        device_reason=flash_triton.unsupported_device_reason,
        paged=paged_triton_attention,
    ),
    "flash_decode_torch": Backend(
        "flash_decode_torch",
        flash_decode_torch.flash_decode_torch_attention,
        "split-KV decoding (flash-decoding) in plain PyTorch: key chunks in parallel, merged on the lse",
        flash_decode_torch.FEATURES,
        no_backward_on=flash_decode_torch.ALL_DEVICE_TYPES,
        paged=paged_torch_attention,
    ),
    "flash_decode_triton": Backend(
        "flash_decode_triton",
        flash_decode_triton.flash_decode_triton_attention,
        "split-KV decoding Triton kernels (CUDA; the CPU only under TRITON_INTERPRET=1), forward only",
        flash_decode_triton.FEATURES,
        no_backward_on=flash_decode_torch.ALL_DEVICE_TYPES,
        requires=("triton",),
        paged=paged_triton_attention,
    ),
}
