"""Block configurations of the FlashAttention kernels, validated, with per-device defaults.

No Triton import, so callers can build and check configurations on any install.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FlashTritonConfig", "KernelConfig", "default_config"]


def _check_power_of_two(name: str, value: int, low: int, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if not ok or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class KernelConfig:
    """One kernel's launch shape: query rows and key rows per program, warps, software-pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        # tl.dot needs tiles of at least 16 on each side; 256 already exceeds the registers of one program.
        _check_power_of_two("block_m", self.block_m, 16, 256)
        _check_power_of_two("block_n", self.block_n, 16, 256)
        _check_power_of_two("num_warps", self.num_warps, 1, 16)
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must be an integer in [1, 8], got {self.num_stages!r}")


@dataclass(frozen=True)
class FlashTritonConfig:
    """Launch shapes of the three kernels: forward, backward dq, backward dk/dv."""

    fwd: KernelConfig
    dq: KernelConfig
    dkdv: KernelConfig


#: Per head-dim defaults for CUDA, chosen among configurations that compile for sm_90 without register
#: spills (``cuobjdump --dump-resource-usage``, see docs/flash-notes.md), then by H100 timings.
CUDA_CONFIGS = {
    64: FlashTritonConfig(
        fwd=KernelConfig(128, 64, num_warps=8, num_stages=3),
        dq=KernelConfig(128, 64, num_warps=8, num_stages=3),
        dkdv=KernelConfig(32, 64, num_warps=4, num_stages=3),
    ),
    128: FlashTritonConfig(
        fwd=KernelConfig(128, 64, num_warps=8, num_stages=3),
        dq=KernelConfig(128, 64, num_warps=8, num_stages=3),
        dkdv=KernelConfig(32, 128, num_warps=8, num_stages=3),
    ),
    256: FlashTritonConfig(
        fwd=KernelConfig(64, 32, num_warps=4, num_stages=2),
        dq=KernelConfig(64, 32, num_warps=4, num_stages=2),
        dkdv=KernelConfig(32, 32, num_warps=4, num_stages=2),
    ),
}

#: float32 products run on the CUDA cores ("ieee" precision), whose operands live in registers: only
#: small tiles compile without spilling (measured the same way). float32 is the exact path, not the fast one.
FLOAT32_CONFIGS = {
    64: FlashTritonConfig(*(KernelConfig(32, 32, num_warps=8, num_stages=2) for _ in range(3))),
    256: FlashTritonConfig(*(KernelConfig(16, 16, num_warps=4, num_stages=2) for _ in range(3))),
}

#: Triton's CPU interpreter runs each program as NumPy calls: few, larger tiles are cheaper than many.
INTERPRETER_CONFIG = FlashTritonConfig(
    fwd=KernelConfig(32, 32, num_warps=1, num_stages=1),
    dq=KernelConfig(32, 32, num_warps=1, num_stages=1),
    dkdv=KernelConfig(32, 32, num_warps=1, num_stages=1),
)


def default_config(head_dim: int, device_type: str, dtype: torch.dtype = torch.bfloat16) -> FlashTritonConfig:
    """The configuration used when none is given: per head dim and dtype on CUDA, small tiles in the interpreter."""
    if device_type != "cuda":
        return INTERPRETER_CONFIG
    table = FLOAT32_CONFIGS if dtype == torch.float32 else CUDA_CONFIGS
    padded = next(size for size in sorted(table) if head_dim <= size)  # head_dim <= 256 is checked
    return table[padded]
