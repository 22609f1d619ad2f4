"""Model-level benchmark: prefill and decode throughput of the GPT model on each attention implementation.

- **prefill**: one forward pass over a ``(batch, prompt_len)`` prompt (filling a KV cache when the
  implementation has one): tokens/s = batch * prompt_len / time.
- **decode**: ``new_tokens`` greedy steps after that prompt: tokens/s = batch * new_tokens / time. With a
  KV cache each step runs the newest token only; implementations without one recompute the whole
  sequence each step (``decode_mode="recompute"``), which is what they would have to do.

Every implementation gets the same random weights (timing does not depend on their values), the model
runs in eval mode with dropout 0, and timing is :func:`attnlab.bench.timing.time_callable` (warm,
synchronised, median of several samples) after one untimed warm-up call (compilation included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from rich.table import Table

from ..bench.devices import is_out_of_memory
from ..bench.timing import Timing, time_callable
from ..registry import get_implementation, unsupported_reason
from .config import GPTConfig
from .model import GPTModel
from .state import export_state, load_state

__all__ = ["ModelBenchRow", "benchmark_model", "model_bench_table"]


@dataclass(frozen=True)
class ModelBenchRow:
    """One implementation's prefill and decode throughput (None when skipped)."""

    impl: str
    status: str  # "ok" or "skipped"
    decode_mode: str  # "kv-cache" or "recompute"
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    prefill: Timing | None = None  # seconds for the whole prompt
    decode: Timing | None = None  # seconds for all new_tokens steps
    note: str = ""


def _check_sizes(config: GPTConfig, batch: int, prompt_len: int, new_tokens: int) -> None:
    for name, value in (("batch", batch), ("prompt_len", prompt_len), ("new_tokens", new_tokens)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if prompt_len + new_tokens > config.context_length:
        raise ValueError(
            f"prompt_len {prompt_len} + new_tokens {new_tokens} = {prompt_len + new_tokens} exceeds "
            f"context_length {config.context_length}"
        )


def _decode_fn(model: GPTModel, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> Callable[[], None]:
    """A call that decodes ``new_tokens`` greedy tokens after ``prompt`` (b, t), prefill excluded."""
    prompt_len = prompt.shape[1]
    if use_cache:
        cache = model.new_kv_cache(prompt_len + new_tokens)
        first_token = model(prompt, cache)[:, -1:].argmax(dim=-1)  # (b, 1)

        def decode() -> None:
            cache.truncate(prompt_len)  # every call starts from the same prefilled cache
            token = first_token  # (b, 1)
            for _ in range(new_tokens):
                token = model(token, cache)[:, -1:].argmax(dim=-1)  # (b, 1)

        return decode

    # Like the cached path, start after the prompt's own pass: each of the new_tokens calls then runs one
    # sequence of t + 1 ... t + new_tokens tokens, where the cached path runs one token against the cache.
    first_token = model(prompt)[:, -1:].argmax(dim=-1)  # (b, 1)

    def recompute() -> None:
        sequence = torch.cat([prompt, first_token], dim=1)  # (b, t + 1)
        for _ in range(new_tokens):
            token = model(sequence)[:, -1:].argmax(dim=-1)  # (b, 1)
            sequence = torch.cat([sequence, token], dim=1)  # (b, t + 1)

    return recompute


def _prefill_fn(model: GPTModel, prompt: torch.Tensor, use_cache: bool) -> Callable[[], None]:
    cache = model.new_kv_cache(prompt.shape[1]) if use_cache else None

    def prefill() -> None:
        if cache is not None:
            cache.truncate(0)
        model(prompt, cache)

    return prefill


@torch.no_grad()
def benchmark_model(
    config: GPTConfig,
    impls: Sequence[str],
    *,
    batch: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 32,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    min_run_time: float = 0.5,
    min_samples: int = 3,
    seed: int = 0,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[ModelBenchRow]:
    """Prefill and decode tokens/s of ``config``'s model on each of ``impls`` (random weights).

    ``on_progress(done, total, description)`` is called before each of the ``2 * len(impls)`` timings
    (the signature of :func:`attnlab.bench.run_benchmark`'s callback).
    """
    _check_sizes(config, batch, prompt_len, new_tokens)
    for name in impls:
        get_implementation(name)  # unknown names fail before any timing, with the list of valid ones
    device = torch.device(device)
    config = replace(config, dropout=0.0)  # eval mode ignores dropout; 0 lets implementations without it run
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's random state
        torch.manual_seed(seed)
        state = export_state(GPTModel(config, attn_impl="fused_qkv"))  # one set of weights for every impl
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=generator).to(device)  # (b, t)
    report = on_progress or (lambda done, total, description: None)
    total = 2 * len(impls)
    rows = []
    for index, name in enumerate(impls):
        use_cache = get_implementation(name).supports_kv_cache()
        decode_mode = "kv-cache" if use_cache else "recompute"
        reason = unsupported_reason(name, device.type, "forward")
        if reason is not None:
            rows.append(ModelBenchRow(name, "skipped", decode_mode, note=reason))
            report(2 * index + 2, total, f"{name}: skipped ({reason})")
            continue
        try:
            with torch.random.fork_rng(devices=[]):  # its random init is overwritten; keep the caller's RNG
                model = GPTModel(config, attn_impl=name)
            load_state(model, state)
            model = model.to(device=device, dtype=dtype).eval()
            phases = (
                ("prefill", _prefill_fn(model, prompt, use_cache)),
                ("decode", _decode_fn(model, prompt, new_tokens, use_cache)),
            )
            timings = []
            for phase_index, (phase, fn) in enumerate(phases):
                report(2 * index + phase_index, total, f"{name}: {phase} (warm-up, then timing)")
                fn()  # warm-up, compilation included
                timings.append(time_callable(fn, device, min_run_time=min_run_time, min_samples=min_samples))
            prefill, decode = timings
            del model, phases
        except Exception as error:  # one implementation failing must not end the run: it becomes a row
            status = "oom" if is_out_of_memory(error) else "error"
            rows.append(ModelBenchRow(name, status, decode_mode, note=f"{type(error).__name__}: {error}"[:300]))
            continue
        rows.append(
            ModelBenchRow(
                name,
                "ok",
                decode_mode,
                prefill_tokens_per_s=batch * prompt_len / prefill.median_s,
                decode_tokens_per_s=batch * new_tokens / decode.median_s,
                prefill=prefill,
                decode=decode,
            )
        )
    report(total, total, "done")
    return rows


def model_bench_table(rows: Sequence[ModelBenchRow], title: str = "") -> Table:
    """The rows as a rich table: tokens/s (higher is better) and the median seconds behind them."""
    table = Table(title=title or None)
    for column in ("implementation", "decode", "prefill tokens/s", "decode tokens/s", "prefill s", "decode s"):
        table.add_column(column, justify="left" if column in ("implementation", "decode") else "right")
    for row in rows:
        if row.status != "ok":
            table.add_row(row.impl, row.decode_mode, "—", "—", "—", f"[yellow]skipped: {row.note}[/]")
            continue
        table.add_row(
            row.impl,
            row.decode_mode,
            f"{row.prefill_tokens_per_s:,.0f}",
            f"{row.decode_tokens_per_s:,.1f}",
            f"{row.prefill.median_s:.4f}",
            f"{row.decode.median_s:.3f}",
        )
    return table
