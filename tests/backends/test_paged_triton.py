"""paged_triton (the paged_decode kernel): its interpreter cases in a subprocess, its refusals, and CUDA sizes.

The kernel runs on the CPU only in Triton's interpreter, which must be switched on before triton is imported,
so its cases (paged_triton_interpreter_cases.py) run in a subprocess, as test_flash_decode.py's do. Error
bounds: FlashAttention's rule (paged_cases.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from paged_cases import assert_paged_matches_reference, make_paged_inputs, run_paged

from attnlab.backends import PAGED, backends_with
from attnlab.backends.paged_triton import paged_triton_attention

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER_CASES = Path(__file__).with_name("paged_triton_interpreter_cases.py")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_interpreter_suite():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable, "-m", "pytest", str(INTERPRETER_CASES),
        "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-W", "error",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_registered_on_the_triton_backends():
    assert {"flash_triton", "flash_decode_triton"} <= set(backends_with(PAGED))


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_paged_inputs([20], 2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"paged_triton runs on CUDA; on the CPU only .* TRITON_INTERPRET=1"):
        run_paged(paged_triton_attention, inputs)
    inputs.q, inputs.key_pages, inputs.value_pages = (
        x.double() for x in (inputs.q, inputs.key_pages, inputs.value_pages)
    )
    with pytest.raises(ValueError, match=r"paged_triton supports float16, bfloat16, float32; got torch\.float64"):
        run_paged(paged_triton_attention, inputs)


CUDA = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t_q", [1, 4])
@pytest.mark.parametrize("num_splits", [1, 7, None])
def test_cuda_ragged_batch(num_splits, t_q, dtype):
    inputs = make_paged_inputs([1, 300, 2000, 777], 32, t_q, 128, 16, h_kv=8, dtype=dtype, seed=t_q)
    for name in ("q", "k", "v", "key_pages", "value_pages", "block_table", "kv_lens"):
        setattr(inputs, name, getattr(inputs, name).cuda())
    options = {"window": 500, "softcap": 30.0, "sinks": torch.randn(32, device="cuda")}
    with torch.no_grad():
        assert_paged_matches_reference(
            lambda *args: paged_triton_attention(*args, num_splits=num_splits), inputs, **options
        )
