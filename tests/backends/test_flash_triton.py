"""flash_triton: the interpreter suite (in a subprocess), the CUDA suite, and input validation.

On a machine without a GPU the kernels are checked by flash_triton_interpreter_cases.py, run here in a
child process with ``TRITON_INTERPRET=1`` set before triton is imported (see that file for why).
The CUDA tests use the issue's full sizes and all three dtypes; they are skipped without CUDA.
Error bounds: the issue's rule, see flash_reference.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flash_reference import (
    assert_matches_reference,
    assert_rows_without_keys_are_zero,
    make_inputs,
    run_with_grads,
)

from attnlab.backends import BACKENDS, AttentionSpec
from attnlab.backends.flash_triton import unsupported_device_reason
from attnlab.kernels.config import FlashTritonConfig, KernelConfig, default_config

flash_triton_attention = BACKENDS["flash_triton"]

HAS_TRITON = importlib.util.find_spec("triton") is not None


def with_config(config):
    """flash_triton through the registry with explicit kernel block sizes."""
    return lambda q, k, v, **options: flash_triton_attention.attend(q, k, v, AttentionSpec(**options), config=config)


CUDA = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
CASES = Path(__file__).with_name("flash_triton_interpreter_cases.py")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_interpreter_suite():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(CASES),
        "-o",
        "addopts=",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in unsupported_device_reason("cpu")
    assert unsupported_device_reason("cuda") is None
    q, k, v, _ = make_inputs(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_triton_attention(q, k, v)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unsupported_device_reason("cpu") is None


def test_bad_inputs_are_refused():
    q, k, v, _ = make_inputs(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="does not support dropout"):
        flash_triton_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"supports float16, bfloat16, float32; got torch\.float64"):
        flash_triton_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="share one dtype"):
        flash_triton_attention(q, k.half(), v)
    big = torch.zeros(1, 1, 2, 512)
    with pytest.raises(ValueError, match="head_dim 512 exceeds flash_triton's maximum of 256"):
        flash_triton_attention(big, big, big)


def test_kernel_configs_are_validated():
    with pytest.raises(ValueError, match="block_m must be a power of two in \\[16, 256\\], got 48"):
        KernelConfig(48, 64)
    with pytest.raises(ValueError, match="num_stages must be an integer in \\[1, 8\\], got 0"):
        KernelConfig(64, 64, num_warps=4, num_stages=0)
    assert default_config(64, "cuda") != default_config(64, "cpu")


@CUDA
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 2, 17, 97, 113, 257, 1000])
def test_cuda_sequence_lengths(t, causal):
    q, k, v, dout = make_inputs(2, 3, t, t, 64, device="cuda", seed=t)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=causal)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("t_q", "t_k"), [(1, 239), (3, 799), (127, 513), (1024, 1023), (239, 1), (799, 3), (513, 127), (1023, 1024)]
)
def test_cuda_unequal_lengths(t_q, t_k, dtype):
    q, k, v, dout = make_inputs(1, 2, t_q, t_k, 64, dtype=dtype, device="cuda", seed=t_q + t_k)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 80, 128])
def test_cuda_head_dims(head_dim, dtype):
    q, k, v, dout = make_inputs(2, 2, 300, 300, head_dim, dtype=dtype, device="cuda", seed=head_dim)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_scaled_non_contiguous_and_empty_rows(dtype):
    q, k, v, dout = make_inputs(2, 4, 300, 200, 64, dtype=dtype, device="cuda", scale=5.0, contiguous=False)
    assert_matches_reference(flash_triton_attention, q, k, v, dout, causal=True)
    assert_rows_without_keys_are_zero(flash_triton_attention, q, k, v, dout)


@CUDA
def test_cuda_forward_is_bitwise_repeatable_and_empty_batch_works():
    q, k, v, dout = make_inputs(2, 4, 700, 700, 64, dtype=torch.bfloat16, device="cuda")
    first = flash_triton_attention(q, k, v)
    assert all(torch.equal(first, flash_triton_attention(q, k, v)) for _ in range(3))
    q, k, v, dout = make_inputs(0, 4, 7, 7, 64, device="cuda")
    out, dq, *_ = run_with_grads(flash_triton_attention, q, k, v, dout, causal=True)
    assert out.shape == (0, 4, 7, 64) and dq.shape == q.shape


@CUDA
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cuda_other_block_configs(head_dim):
    # The benchmark's autotuning picks among configurations like these; each must be correct.
    for fwd, dq, dkdv in [
        ((64, 64, 4, 2), (128, 32, 8, 2), (32, 128, 4, 3)),
        ((128, 128, 8, 2), (64, 64, 4, 2), (64, 64, 4, 2)),
    ]:
        config = FlashTritonConfig(KernelConfig(*fwd), KernelConfig(*dq), KernelConfig(*dkdv))
        q, k, v, dout = make_inputs(1, 2, 333, 333, head_dim, dtype=torch.bfloat16, device="cuda")
        assert_matches_reference(with_config(config), q, k, v, dout, causal=True)
