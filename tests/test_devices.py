"""resolve_device: a device name torch cannot parse, or one attnlab does not run on, is a clear ValueError."""

import pytest
import torch

from attnlab.devices import resolve_device


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
