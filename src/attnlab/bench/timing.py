"""Time any zero-argument callable the right way for its device: median and spread, warm, synchronised.

- CPU and MPS: ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of calls sized so the timer's
  overhead vanishes, repeated for ``min_run_time``; the Timer synchronises accelerators itself) with
  all the threads torch is using, topped up to ``min_samples`` blocks so the spread means something.
- CUDA: ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flush between calls) when Triton is
  installed, else the same Timer as above.

The callable is assumed warm (its first call, compilation included, already made by the caller).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Measurement, Timer

from ..validate import check_positive_int, check_seconds

__all__ = ["MAX_MIN_RUN_TIME", "Timing", "check_timing_budget", "time_callable", "timing_method"]

#: The longest accepted ``min_run_time``: an hour of timed calls per case. Longer is surely a slip (and
#: ``inf`` or ``nan`` would never finish).
MAX_MIN_RUN_TIME = 3600.0


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over ``num_samples`` samples (each a block of calls)."""

    median_s: float
    p25_s: float
    p75_s: float
    num_samples: int
    method: str

    @property
    def iqr_s(self) -> float:
        """Interquartile range: the spread of the middle half of the samples."""
        return self.p75_s - self.p25_s


def _use_do_bench(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def timing_method(device: torch.device) -> str:
    """What :func:`time_callable` uses on ``device``, for reports."""
    if _use_do_bench(device):
        return "triton.testing.do_bench (CUDA events; median and quartiles)"
    return (
        f"torch.utils.benchmark.Timer.blocked_autorange ({torch.get_num_threads()} threads; "
        "median and quartiles of blocks)"
    )


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    samples = torch.tensor(times, dtype=torch.float64)  # (n,)
    q = torch.quantile(samples, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))  # (3,)
    return q[0].item(), q[1].item(), q[2].item()


def _time_with_timer(fn: Callable[[], object], *, min_run_time: float, min_samples: int) -> Timing:
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    missing = min_samples - len(measurement.raw_times)
    if missing > 0:  # slow calls: one block already exceeds min_run_time; add blocks of the same size
        extra = [timer.timeit(measurement.number_per_run) for _ in range(missing)]
        (measurement,) = Measurement.merge([measurement, *extra])
    p25, median, p75 = _quantiles(measurement.times)
    return Timing(median, p25, p75, len(measurement.times), "torch.utils.benchmark.Timer")


def _time_with_do_bench(fn: Callable[[], object], *, min_run_time: float) -> Timing:
    from triton.testing import do_bench

    rep_ms = 1000 * min_run_time
    p25, median, p75 = do_bench(fn, warmup=max(25, rep_ms // 4), rep=rep_ms, quantiles=[0.25, 0.5, 0.75])
    # do_bench picks its own repeat count (about rep_ms / time per call); report that estimate.
    num_samples = max(1, int(rep_ms / max(median, 1e-6)))
    return Timing(median / 1000, p25 / 1000, p75 / 1000, num_samples, "triton.testing.do_bench")


def check_timing_budget(min_run_time: float, min_samples: int = 1) -> None:
    """Raise ``ValueError`` unless ``min_run_time`` is finite seconds in (0, MAX_MIN_RUN_TIME] and
    ``min_samples`` a positive integer (for configs and callers to check before any work)."""
    check_seconds("min_run_time", min_run_time, MAX_MIN_RUN_TIME)
    check_positive_int("min_samples", min_samples)


def time_callable(
    fn: Callable[[], object], device: torch.device, *, min_run_time: float = 0.2, min_samples: int = 3
) -> Timing:
    """Median and quartiles of the time of one call of ``fn`` on ``device`` (which ``fn`` must use)."""
    check_timing_budget(min_run_time, min_samples)
    if _use_do_bench(device):
        with torch.cuda.device(device):  # do_bench's events and cache flush run on the current device
            return _time_with_do_bench(fn, min_run_time=min_run_time)
    return _time_with_timer(fn, min_run_time=min_run_time, min_samples=min_samples)
