"""The options of one attention call in the form the FlashAttention kernels take them (no Triton import).

:class:`KernelFeatures` is what :mod:`attnlab.backends.flash_triton` builds from an ``AttentionSpec`` and hands
to :mod:`.launch`: plain values and device tensors, each feature switched on by one compile-time flag of the
kernels, so a call without it compiles to a kernel without it. Packed sequences arrive as two per-token
arrays (:func:`packed_sequence_bounds`): the first token of each token's sequence and one past its last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..backends.spec import AttentionSpec

__all__ = ["KernelFeatures", "packed_sequence_bounds"]


def packed_sequence_bounds(
    seq_lens: tuple[int, ...], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token ``t``: ``(seq_start, seq_end)``, int32 (t,), the half-open token range of its packed sequence.

    ``seq_lens = (2, 3)`` gives ``seq_start = [0, 0, 2, 2, 2]`` and ``seq_end = [2, 2, 5, 5, 5]``.
    """
    lengths = torch.tensor(seq_lens, dtype=torch.int64, device=device)  # (n,)
    ends = lengths.cumsum(0)  # (n,)
    seq_start = (ends - lengths).repeat_interleave(lengths).to(torch.int32)  # (t,)
    seq_end = ends.repeat_interleave(lengths).to(torch.int32)  # (t,)
    return seq_start, seq_end


def _check_per_head(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.dim() != 1):
        raise ValueError(f"{name} must be a 1-D tensor (one value per query head) or None, got {tensor!r}")


@dataclass(frozen=True, eq=False)
class KernelFeatures:
    """What the kernels do beyond plain attention (see :mod:`attnlab.backends.spec` for the meanings).

    ``causal``; ``window`` (keys a query sees, itself included) or None; ``softcap`` or None; ``sinks`` and
    ``alibi_slopes``, (h,) tensors on the inputs' device, or None; ``seq_start`` and ``seq_end``, int32 (t,)
    from :func:`packed_sequence_bounds`, or None when nothing is packed; ``kv_lens``, int32 (b,) keys per batch
    row on the inputs' device, or None.
    """

    causal: bool = True
    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None
    seq_start: torch.Tensor | None = None
    seq_end: torch.Tensor | None = None
    kv_lens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be True or False, got {self.causal!r}")
        if self.window is not None:
            if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
                raise ValueError(f"window must be a positive int or None, got {self.window!r}")
            if not self.causal:
                raise ValueError(f"window={self.window} needs causal=True (a sliding window looks back only)")
        if self.softcap is not None and not (isinstance(self.softcap, float) and math.isfinite(self.softcap)):
            raise ValueError(f"softcap must be a finite float or None, got {self.softcap!r}")
        if self.softcap is not None and self.softcap <= 0:
            raise ValueError(f"softcap must be > 0, got {self.softcap!r}")
        _check_per_head("sinks", self.sinks)
        _check_per_head("alibi_slopes", self.alibi_slopes)
        if (self.seq_start is None) != (self.seq_end is None):
            raise ValueError("seq_start and seq_end come together (packed_sequence_bounds gives both)")
        if self.seq_start is not None:
            for name, bound in (("seq_start", self.seq_start), ("seq_end", self.seq_end)):
                if not isinstance(bound, torch.Tensor) or bound.dtype != torch.int32 or bound.dim() != 1:
                    raise ValueError(f"{name} must be a 1-D int32 tensor, got {bound!r}")
            if self.seq_start.shape != self.seq_end.shape:
                raise ValueError(
                    f"seq_start {tuple(self.seq_start.shape)} and seq_end {tuple(self.seq_end.shape)} differ in shape"
                )
        if self.kv_lens is not None and (
            not isinstance(self.kv_lens, torch.Tensor) or self.kv_lens.dtype != torch.int32 or self.kv_lens.dim() != 1
        ):
            raise ValueError(f"kv_lens must be a 1-D int32 tensor (keys per batch row) or None, got {self.kv_lens!r}")

    @classmethod
    def from_spec(cls, spec: AttentionSpec, device: torch.device) -> KernelFeatures:
        """The kernels' form of ``spec`` (sinks and slopes detached: the backward computes the sinks' gradient)."""
        seq_start, seq_end = (None, None) if spec.seq_lens is None else packed_sequence_bounds(spec.seq_lens, device)
        return cls(
            causal=spec.causal,
            window=spec.window,
            softcap=None if spec.softcap is None else float(spec.softcap),
            sinks=None if spec.sinks is None else spec.sinks.detach(),
            alibi_slopes=None if spec.alibi_slopes is None else spec.alibi_slopes.detach(),
            seq_start=seq_start,
            seq_end=seq_end,
            kv_lens=None if spec.kv_lens is None else spec.kv_lens.to(torch.int32).contiguous(),
        )

    @property
    def packed(self) -> bool:
        """Whether the tokens are packed sequences (queries see only keys of their own sequence)."""
        return self.seq_start is not None
