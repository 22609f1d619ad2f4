"""The measured peak: a positive FLOP rate of the named matmul, in the benchmark's dtype."""

import pytest
import torch

from attnlab.bench import measure_peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peak_is_a_matmul_rate(dtype):
    peak = measure_peak(torch.device("cpu"), dtype, matmul_size=128, min_run_time=0.01, min_samples=3)
    assert peak.gflops == pytest.approx(2 * 128**3 / peak.median_s / 1e9)
    assert peak.gflops > 0
    assert peak.dtype == str(dtype).removeprefix("torch.")
    assert "128x128" in peak.method
