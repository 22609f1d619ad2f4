"""Decode throughput against the memory-bandwidth limit, for any model that can prefill and step.

For each context length and each target (an implementation with a weight format), greedy decoding of
``new_tokens`` tokens after a ``context``-token prompt is timed (the cache rewound to the prompt before
every timed call, so each call decodes the same steps). A step reads every weight and the whole KV cache
once (:mod:`.decode_bytes`), so besides tokens/s each row reports those bytes, the rate it read them at,
and that rate as a fraction of the memory bandwidth measured in the same run (:mod:`.bandwidth`).

The bench knows no model: a target is anything with ``module``, ``prefill``, ``step``, ``rewind`` and
``kv_bytes`` (:class:`DecodeTarget`; :class:`attnlab.gpt.decode_target.GPTDecodeTarget` is one). The
reference row (transformers' ``generate``, :class:`.hf_generate.GenerateReference`) is timed alongside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Protocol

import torch
from rich.table import Table
from torch import nn

from .decode_bytes import mean_step_bytes, step_weight_bytes
from .devices import is_out_of_memory
from .timing import Timing, time_callable

if TYPE_CHECKING:
    from .bandwidth import Bandwidth
    from .hf_generate import GenerateReference

__all__ = ["DecodeRow", "DecodeTarget", "benchmark_decode", "decode_table", "time_decode", "with_bandwidth"]

ProgressCallback = Callable[[int, int, str], None]


class DecodeTarget(Protocol):
    """What the decode bench needs of a model (see the module docstring)."""

    module: nn.Module

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor: ...  # (b, t) -> last logits (b, vocab); new cache

    def step(self, token: torch.Tensor) -> torch.Tensor: ...  # (b, 1) -> logits (b, vocab); appends one position

    def rewind(self, length: int) -> None: ...

    def kv_bytes(self, batch: int, length: int) -> int: ...


@dataclass(frozen=True)
class DecodeRow:
    """One target at one context length. ``step_bytes``: mean bytes one decode step reads (weights +
    keys/values); ``bandwidth_fraction``: (step_bytes / step time) / the run's measured bandwidth."""

    impl: str
    quant: str
    context: int
    status: str  # "ok", "oom" or "error"
    tokens_per_s: float | None = None
    ms_per_step: float | None = None
    weight_bytes: int | None = None
    kv_bytes: float | None = None
    step_bytes: float | None = None
    achieved_gb_per_s: float | None = None
    bandwidth_fraction: float | None = None
    logits_error: float | None = None  # max |logits - reference| / max |reference|, prompt's last position
    timing: Timing | None = None  # all new_tokens steps
    note: str = ""


def time_decode(
    target: DecodeTarget, prompt: torch.Tensor, new_tokens: int, device: torch.device, *, min_run_time: float
) -> tuple[Timing, torch.Tensor]:
    """Seconds for ``new_tokens`` greedy steps after ``prompt`` (b, t), and the prompt's last logits."""
    context = prompt.shape[1]
    logits = target.prefill(prompt)  # (b, vocab)
    first = logits.argmax(dim=-1, keepdim=True)  # (b, 1)

    def decode() -> None:
        target.rewind(context)  # every call decodes the same steps from the same prompt
        token = first  # (b, 1)
        for _ in range(new_tokens):
            token = target.step(token).argmax(dim=-1, keepdim=True)  # (b, 1)

    decode()  # warm-up (compilation, first allocations)
    return time_callable(decode, device, min_run_time=min_run_time), logits


def _relative_error(logits: torch.Tensor, reference: torch.Tensor | None) -> float | None:
    if reference is None:
        return None
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float((logits.float() - reference.float()).abs().max() / scale)


def _row(
    name: str,
    quant: str,
    context: int,
    *,
    timing: Timing,
    module: nn.Module,
    kv_bytes: Callable[[int], int],
    batch: int,
    new_tokens: int,
    logits_error: float | None,
    note: str = "",
) -> DecodeRow:
    step_s = timing.median_s / new_tokens
    weights = step_weight_bytes(module, batch)
    step_bytes = mean_step_bytes(weights, kv_bytes, context, new_tokens)
    achieved = step_bytes / step_s
    return DecodeRow(
        name,
        quant,
        context,
        "ok",
        tokens_per_s=batch / step_s,
        ms_per_step=1e3 * step_s,
        weight_bytes=weights,
        kv_bytes=step_bytes - weights,
        step_bytes=step_bytes,
        achieved_gb_per_s=achieved / 1e9,
        logits_error=logits_error,
        timing=timing,
        note=note,
    )


def _failed(name: str, quant: str, context: int, error: Exception) -> DecodeRow:
    status = "oom" if is_out_of_memory(error) else "error"
    return DecodeRow(name, quant, context, status, note=f"{type(error).__name__}: {error}"[:300])


@torch.no_grad()
def benchmark_decode(
    targets: Sequence[tuple[str, str, DecodeTarget]],
    contexts: Sequence[int],
    *,
    vocab_size: int,
    batch: int,
    new_tokens: int,
    device: torch.device,
    reference: GenerateReference | None = None,
    min_run_time: float = 0.5,
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
) -> list[DecodeRow]:
    """One row per (context, target) and per context for ``reference``; ``targets`` are (implementation,
    quantization, target) triples. The inputs are assumed validated (:class:`.decode_config.DecodeBenchConfig`).

    Logit errors compare each target's prompt logits with the reference's, or, without one, with the first
    target's. ``on_progress(done, total, description)`` is called before each row. The rows' bandwidth
    fractions are left empty: :func:`with_bandwidth` fills them from a bandwidth measured in the same run.
    """
    report = on_progress or (lambda done, total, description: None)
    per_context = len(targets) + (reference is not None)
    total = len(contexts) * per_context
    rows: list[DecodeRow] = []
    for context_index, context in enumerate(contexts):
        generator = torch.Generator().manual_seed(seed + context)
        prompt = torch.randint(0, vocab_size, (batch, context), generator=generator).to(device)  # (b, t)
        done = context_index * per_context
        expected = None
        if reference is not None:
            name = reference.name
            report(done, total, f"context {context}: {name}")
            try:
                expected = reference.prefill_logits(prompt)  # (b, vocab)
                timing = reference.decode_timing(prompt, new_tokens, min_run_time=min_run_time)
                rows.append(
                    _row(
                        name,
                        "none",
                        context,
                        timing=timing,
                        module=reference.module,
                        kv_bytes=partial(reference.kv_bytes, batch),
                        batch=batch,
                        new_tokens=new_tokens,
                        logits_error=None,
                        note=f"attention {reference.attn_implementation}; {timing.method}",
                    )
                )
            except Exception as error:  # one failing row must not end the run
                rows.append(_failed(name, "none", context, error))
            done += 1
        for name, quant, target in targets:
            report(done, total, f"context {context}: {name}, weights {quant}")
            done += 1
            try:
                timing, logits = time_decode(target, prompt, new_tokens, device, min_run_time=min_run_time)
            except Exception as error:
                rows.append(_failed(name, quant, context, error))
                continue
            if expected is None:
                expected = logits
            rows.append(
                _row(
                    name,
                    quant,
                    context,
                    timing=timing,
                    module=target.module,
                    kv_bytes=partial(target.kv_bytes, batch),
                    batch=batch,
                    new_tokens=new_tokens,
                    logits_error=_relative_error(logits, expected),
                )
            )
    report(total, total, "done")
    return rows


def with_bandwidth(rows: Sequence[DecodeRow], bandwidth: Bandwidth) -> list[DecodeRow]:
    """The rows with ``bandwidth_fraction`` = achieved bytes/s over ``bandwidth``'s."""
    return [
        row
        if row.achieved_gb_per_s is None
        else replace(row, bandwidth_fraction=1e9 * row.achieved_gb_per_s / bandwidth.bytes_per_s)
        for row in rows
    ]


def decode_table(rows: Sequence[DecodeRow], title: str = "") -> Table:
    """The rows as a rich table: tokens/s, ms per step, bytes per step, GB/s and share of bandwidth."""
    table = Table(title=title or None)
    columns = ("context", "implementation", "weights", "tokens/s", "ms / step", "MB / step", "GB/s", "of bandwidth")
    for column in (*columns, "logits err"):
        table.add_column(column, justify="left" if column in ("implementation", "weights") else "right")
    for row in rows:
        if row.status != "ok":
            table.add_row(str(row.context), row.impl, row.quant, "—", "—", "—", "—", "—", f"[yellow]{row.note}[/]")
            continue
        table.add_row(
            str(row.context),
            row.impl,
            row.quant,
            f"{row.tokens_per_s:,.1f}",
            f"{row.ms_per_step:.2f}",
            f"{row.step_bytes / 1e6:,.1f}",
            f"{row.achieved_gb_per_s:.2f}",
            "—" if row.bandwidth_fraction is None else f"{100 * row.bandwidth_fraction:.0f} %",
            "ref" if row.logits_error is None else f"{row.logits_error:.1e}",
        )
    return table
