"""The measured peak: a positive FLOP rate of the named matmul, in the benchmark's dtype."""

import pytest
import torch

from attnlab.bench import measure_peak
from attnlab.bench import peak as peak_module
from attnlab.bench.peak import CPU_PROBE_SIZE, MAX_CALL_SECONDS, choose_matmul_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peak_is_a_matmul_rate(dtype):
    peak = measure_peak(torch.device("cpu"), dtype, matmul_size=128, min_run_time=0.01, min_samples=3)
    assert peak.gflops == pytest.approx(2 * 128**3 / peak.median_s / 1e9)
    assert peak.gflops > 0
    assert peak.dtype == str(dtype).removeprefix("torch.")
    assert "128x128" in peak.method


class _Clock:
    """A perf_counter whose every call advances ``step`` seconds: each timed product seems to take ``step``."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def perf_counter(self):
        self.now += self.step
        return self.now


@pytest.mark.parametrize(("probe_seconds", "size"), [(0.08, 256), (0.004, 512), (1e-5, 2048)])
def test_cpu_size_keeps_one_product_under_the_limit(monkeypatch, probe_seconds, size):
    # 0.08 s for 256 x 256 is a CPU without a fast float16 matmul (2048 x 2048 took 43 s on one).
    monkeypatch.setattr(peak_module, "time", _Clock(probe_seconds))
    assert choose_matmul_size(torch.device("cpu"), torch.float16) == size
    assert probe_seconds * (size / CPU_PROBE_SIZE) ** 3 <= MAX_CALL_SECONDS


def test_default_peak_on_cpu_is_chosen_and_named():
    peak = measure_peak(torch.device("cpu"), torch.float32, min_run_time=0.01, min_samples=1)
    assert CPU_PROBE_SIZE <= peak.matmul_size <= 2048
    assert f"{peak.matmul_size}x{peak.matmul_size}" in peak.method
