"""Device and dtype resolution: auto picks what exists, asking for an absent or unknown device is a clear error.

``resolve_device`` lives in attnlab.devices (tested here, through the re-export the benchmark uses).
"""

import pytest
import torch

from attnlab.bench import describe_device, resolve_device, resolve_dtype


def test_auto_picks_an_available_device():
    device = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_absent_mps_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'mps' is not available"):
        resolve_device("mps")


def test_dtypes():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'; choose from float32, bfloat16, float16"):
        resolve_dtype("int8")


def test_cpu_description_names_the_cpu_count():
    assert "logical CPUs" in describe_device(torch.device("cpu"))


@pytest.mark.parametrize("name", ["gpu0", "cuda:x", ""])
def test_unparsable_names_are_a_value_error_listing_the_choices(name):
    with pytest.raises(ValueError, match=r"unknown device .*; choose from auto, cpu, cuda, cuda:N, mps"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["meta", "xla"])
def test_devices_attnlab_does_not_run_on_are_refused(name):
    with pytest.raises(ValueError, match=f"unsupported device '{name}'"):
        resolve_device(name)


def test_cpu_resolves():
    assert resolve_device("cpu") == torch.device("cpu")
