"""The flash implementations as multi-head modules: registered, equal to the float64 reference, no dropout.

Tolerances are those of :func:`attnlab.check.check_implementations` (1e-5 forward, 1e-4 gradients,
relative to the reference's scale; float32 against float64).
"""

from __future__ import annotations

import pytest
import torch

from attnlab import IMPLEMENTATIONS, build
from attnlab.check import check_implementations
from attnlab.implementations.fused_projection import FusedQKVBackendAttention
from attnlab.registry import unsupported_reason


@pytest.mark.parametrize("name", ["flash_torch", "flash_triton"])
def test_registered_as_fused_projection_modules(name):
    cls = IMPLEMENTATIONS[name]
    assert issubclass(cls, FusedQKVBackendAttention) and cls.backend == name


def test_flash_torch_matches_reference_with_grads():
    (result,) = check_implementations(["flash_torch"], batch=2, seq_len=37, d_in=48, d_out=48, num_heads=3)
    assert result.status == "pass" and result.input_grad_err is not None, result


def test_flash_torch_module_on_the_notebook_shape_matches_sdpa():
    torch.manual_seed(0)
    flash = build("flash_torch", d_in=64, d_out=64, num_heads=4, context_length=300)
    sdpa = build("sdpa", d_in=64, d_out=64, num_heads=4, context_length=300)
    sdpa.set_weights(flash.get_weights())
    x = torch.randn(2, 300, 64)  # (b, t, d_in)
    with torch.no_grad():
        expected = sdpa(x)  # (b, t, d_out)
        err = ((flash(x) - expected).abs().max() / expected.abs().max()).item()
    # float32, two different summation orders over 300 keys: measured 1.9e-7 relative to the largest output;
    # 1e-5 leaves 50x headroom, while a wrong mask or scale errs by 1e-2 or more.
    assert err <= 1e-5


@pytest.mark.parametrize("name", ["flash_torch", "flash_triton"])
def test_dropout_is_refused(name):
    with pytest.raises(ValueError, match=r"does not support dropout; got dropout=0\.1"):
        build(name, d_in=8, d_out=8, num_heads=2, context_length=4, dropout=0.1)


def test_flash_triton_runs_on_cpu_only_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in unsupported_reason("flash_triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert unsupported_reason("flash_triton", "cpu") is None
    assert unsupported_reason("flash_triton", "mps") is not None
    assert unsupported_reason("flash_torch", "cpu", "backward") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["flash_torch", "flash_triton"])
def test_cuda_matches_reference(name):
    (result,) = check_implementations([name], batch=2, seq_len=77, d_in=64, d_out=64, num_heads=4, device="cuda")
    assert result.status == "pass", result
