"""One tiny benchmark run shared by the runner, report and plot tests (a run costs a worker process)."""

import copy

import pytest

from attnlab.bench import BenchConfig, BenchResult, run_benchmark

#: Small enough that a case takes milliseconds; accuracy_tokens < seq_len exercises the prefix check.
TINY = dict(
    batch=2,
    seq_len=32,
    d_model=32,
    num_heads=4,
    min_run_time=0.01,
    min_samples=3,
    peak_matmul_size=256,
    accuracy_tokens=16,
)


@pytest.fixture(scope="session")
def tiny_run() -> tuple[BenchResult, list[tuple[int, int, str]]]:
    """sdpa and ch03, forward and backward, with the memory worker, on the CPU; and its progress events."""
    events = []
    config = BenchConfig(impls=("sdpa", "ch03"), device="cpu", **TINY)
    result = run_benchmark(config, on_progress=lambda done, total, what: events.append((done, total, what)))
    return result, events


@pytest.fixture
def tiny_result(tiny_run) -> BenchResult:
    """The tiny run's result, a deep copy: tests may modify it."""
    return copy.deepcopy(tiny_run[0])
