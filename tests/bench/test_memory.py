"""The memory meter measures what a call allocates, in a worker process, and survives failing workloads."""

import functools
import sys

import pytest
import torch

from attnlab.bench import WorkloadError, memory_meter

MiB = 2**20


def _allocating(num_floats: int):
    """A picklable make_step whose step allocates (and fills) num_floats float32 values, then frees them."""
    return functools.partial(functools.partial, torch.ones, num_floats)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the precise RSS method needs Linux /proc")
def test_cpu_worker_measures_an_allocation_and_recovers_from_errors():
    with memory_meter(torch.device("cpu")) as meter:
        small = meter.measure(_allocating(16 * MiB // 4))
        large = meter.measure(_allocating(64 * MiB // 4))
        with pytest.raises(WorkloadError, match="RuntimeError") as error:
            meter.measure(_allocating(-1))  # torch.ones(-1) raises inside the worker
        assert not error.value.out_of_memory
        again = meter.measure(_allocating(16 * MiB // 4))  # the worker still serves
    # Resident pages come in 4 KiB pages and the allocator adds a little; 1 MiB covers both.
    assert small.peak_bytes == pytest.approx(16 * MiB, abs=MiB)
    assert large.peak_bytes == pytest.approx(64 * MiB, abs=MiB)
    assert again.peak_bytes == pytest.approx(16 * MiB, abs=MiB)
    assert "RSS" in small.method


def test_disabled_meter_measures_nothing():
    with memory_meter(torch.device("cpu"), enabled=False) as meter:
        result = meter.measure(_allocating(1024))
    assert result.peak_bytes is None
    assert "disabled" in result.method
