"""One tiny benchmark run shared by the runner, report and plot tests (a run costs a worker process)."""

import copy

import pytest
from bench_sizes import TINY

from attnlab.bench import BenchConfig, BenchResult, run_benchmark


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
