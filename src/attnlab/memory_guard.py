"""Refuse work that cannot fit in memory before it starts: an estimate, the memory available, one clear error.

Without a guard, a request that is too large is not an error but a disaster: on the CPU the process grows
until the kernel's out-of-memory killer ends it, with no message, after minutes of work. So ``attnlab
check`` and the benchmarks estimate what a run needs and compare it with what the machine has free now
(:func:`available_memory`), and refuse with both numbers named.

The estimates are upper bounds of measured peaks, not exact accounts. They were calibrated with the peak
resident set size of one forward (and backward) pass on the CPU, float32, ``t`` = 1024 to 4096 tokens, 1
to 32 heads. What grows fastest is attention's ``t x t`` part, which depends on how a core computes it
(:func:`attention_memory`):

- ``dense``: the core materialises the ``(b, h, t, t)`` scores and weights (matmul, mask, softmax, matmul):
  measured 2.8 to 3.8 copies alive in a forward pass, 3.3 to 6.3 with the backward pass; and some
  implementations keep a ``(T, T)`` mask buffer (float32 in the book's class).
- ``mask``: a fused kernel given an explicit ``(t, t)`` mask: about two float32 ``t x t`` matrices.
- every call: a fixed overhead (``RUNTIME_OVERHEAD``) for buffers the libraries allocate on first use.
- ``tiled``: FlashAttention-style cores (``sdpa``, ``flex``, ``flash_*``) never hold ``t x t`` values.

The float64 reference of ``attnlab check`` (:mod:`attnlab.reference`, one query at a time, with autograd)
keeps, per batch element and (query, key) pair, about 3 float64 values per head plus one per output
feature until its backward pass (:func:`reference_bytes`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from .registry import get_implementation

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .gpt.config import GPTConfig

__all__ = [
    "DENSE_SCORE_COPIES",
    "MASK_MATRICES",
    "RUNTIME_OVERHEAD",
    "AttentionMemory",
    "AvailableMemory",
    "attention_bytes",
    "attention_memory",
    "available_memory",
    "format_gib",
    "memory_shortfall",
    "model_bench_bytes",
    "reference_bytes",
    "require_memory",
]

AttentionMemory = Literal["dense", "mask", "tiled"]

#: How each backend's core grows with the sequence length (see the module docstring). An implementation
#: without a ``backend`` (it computes the core itself), or with a backend not listed, counts as ``dense``:
#: the estimate then errs on the side of refusing.
_BACKEND_MEMORY: dict[str, AttentionMemory] = {
    "naive": "dense",
    "sdpa_mask": "mask",
    "sdpa": "tiled",
    "flex": "tiled",
    "flash_torch": "tiled",
    "flash_triton": "tiled",
}
#: Copies of the (b, h, t, t) scores alive at once in a dense core (measured at most 3.8 and 6.3; rounded up).
DENSE_SCORE_COPIES = {"forward": 4, "backward": 7}
#: float32 (t, t) matrices a masked core holds (measured about 2.2 with everything else; rounded up).
MASK_MATRICES = 4
#: Memory any first call takes whatever the sizes (library buffers, allocator arenas): measured 25 to 45 MiB.
RUNTIME_OVERHEAD = 64 * 2**20

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class AvailableMemory:
    """Bytes free for new work on a device now, and where the number comes from."""

    num_bytes: int
    source: str


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (a container's), or None without a limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((_CGROUP / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on this platform (e.g. macOS, Windows)
        return None


def available_memory(device: torch.device | str) -> AvailableMemory | None:
    """Memory free on ``device`` now: the CPU's ``MemAvailable`` (capped by a container's cgroup limit, or
    ``os.sysconf`` where there is no ``/proc``), a CUDA device's free memory; None where unknown (e.g. MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return AvailableMemory(int(free), "free memory reported by torch.cuda.mem_get_info")
    if device.type != "cpu":
        return None
    candidates = [
        (_meminfo_available(), "MemAvailable in /proc/meminfo"),
        (_cgroup_available(), "room under the cgroup memory limit"),
    ]
    known = [(num_bytes, source) for num_bytes, source in candidates if num_bytes is not None]
    if known:
        num_bytes, source = min(known)
        return AvailableMemory(num_bytes, source)
    if (num_bytes := _sysconf_available()) is not None:
        return AvailableMemory(num_bytes, "os.sysconf available physical pages")
    return None


def format_gib(num_bytes: int) -> str:
    """``3 * 2**30 -> '3.0 GiB'``; astronomically large numbers in scientific notation."""
    gib = num_bytes / 2**30 if num_bytes.bit_length() < 1000 else math.inf
    if gib < 1e6:
        return f"{gib:,.1f} GiB"
    return f"{gib:.1e} GiB" if math.isfinite(gib) else "more than 1e+290 GiB"


def memory_shortfall(estimate: int, available: AvailableMemory | None, device: torch.device | str) -> str | None:
    """Why work estimated at ``estimate`` bytes cannot run, or None when it fits (or nothing is known)."""
    if available is None or estimate <= available.num_bytes:
        return None
    return (
        f"needs about {format_gib(estimate)} of {torch.device(device).type} memory, but only "
        f"{format_gib(available.num_bytes)} is available ({available.source})"
    )


def require_memory(estimate: int, device: torch.device | str, what: str, hint: str = "") -> None:
    """Raise ``ValueError`` ("``what`` needs about X GiB ..., but only Y GiB is available``hint``") when the
    work cannot fit."""
    reason = memory_shortfall(estimate, available_memory(device), device)
    if reason is not None:
        raise ValueError(f"{what} {reason}{hint}")


def attention_memory(impl: str) -> AttentionMemory:
    """How implementation ``impl``'s attention core grows with the sequence length (module docstring)."""
    backend = getattr(get_implementation(impl), "backend", None)
    return _BACKEND_MEMORY.get(backend, "dense") if isinstance(backend, str) else "dense"


def _weight_count(d_in: int, d_out: int) -> int:
    return 3 * d_out * d_in + d_out * d_out + 4 * d_out  # q, k, v, out projections and their biases


def attention_bytes(
    impl: str,
    *,
    batch: int,
    seq_len: int,
    d_in: int,
    d_out: int,
    num_heads: int,
    element_size: int,
    backward: bool,
) -> int:
    """Upper estimate of the peak bytes of one call of ``impl`` (built, weights loaded, input made)."""
    passes = 2 if backward else 1  # the backward pass keeps a gradient beside each saved tensor
    weights = _weight_count(d_in, d_out) * element_size * (passes + 1)  # parameters, their gradients, a copy
    activations = batch * seq_len * (d_in + 6 * d_out) * element_size * 2 * passes  # x, q, k, v, context, out
    kind = attention_memory(impl)
    if kind == "dense":
        copies = DENSE_SCORE_COPIES["backward" if backward else "forward"]
        core = copies * batch * num_heads * seq_len**2 * element_size + 4 * seq_len**2  # + a (T, T) mask buffer
    elif kind == "mask":
        core = MASK_MATRICES * 4 * seq_len**2
    else:
        core = 0
    return weights + activations + core + RUNTIME_OVERHEAD


def reference_bytes(*, batch: int, seq_len: int, d_in: int, d_out: int, num_heads: int) -> int:
    """Upper estimate of the peak bytes of :func:`attnlab.reference.reference_attention` with its backward."""
    pairs = batch * seq_len**2  # (query, key) pairs, counted in full: an upper bound of the causal half
    graph = pairs * (3 * num_heads + d_out) * 10  # float64 values autograd keeps, plus 25 % for the allocator
    activations = batch * seq_len * (d_in + 6 * d_out) * 8 * 3  # inputs, projections, outputs, gradients
    weights = _weight_count(d_in, d_out) * (4 + 8 + 8)  # float32 originals, float64 copies, gradients
    return graph + activations + weights + RUNTIME_OVERHEAD


def model_bench_bytes(
    config: GPTConfig, impls: Iterable[str], *, batch: int, prompt_len: int, new_tokens: int, element_size: int
) -> int:
    """Upper estimate of the peak bytes of :func:`attnlab.gpt.bench.benchmark_model` on ``impls``.

    Two float32 copies of the weights are alive at once (the exported weights every implementation loads,
    and one model), plus one pass over ``prompt_len + new_tokens`` tokens: activations, logits, the KV
    cache and the attention core of the most memory-hungry implementation.
    """
    d, layers, heads, vocab, context = (
        config.d_model,
        config.n_layers,
        config.n_heads,
        config.vocab_size,
        config.context_length,
    )
    params = vocab * d * (1 if config.tie_embeddings else 2) + context * d + layers * (12 * d * d + 13 * d) + 2 * d
    weights = 2 * params * 4
    tokens = prompt_len + new_tokens
    activations = batch * tokens * (16 * d + vocab) * max(element_size, 4)  # blocks' activations and the logits
    cache = 2 * layers * batch * tokens * d * element_size
    kinds = {attention_memory(name) for name in impls}
    core = 0
    if "dense" in kinds:  # per-head (T, T) float32 mask buffers in every layer (the wrapper's) and the scores
        core = (
            layers * heads * context**2 * 4 + DENSE_SCORE_COPIES["forward"] * batch * heads * tokens**2 * element_size
        )
    elif "mask" in kinds:
        core = MASK_MATRICES * 4 * tokens**2
    return weights + activations + cache + core + RUNTIME_OVERHEAD
