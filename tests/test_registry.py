"""The registries: lookup by name, clear errors, and capabilities that say what runs here."""

import pytest

from attnlab import BACKENDS, IMPLEMENTATIONS, available_implementations, get_backend, get_implementation
from attnlab.implementations import Capabilities
from attnlab.registry import unsupported_reason


def test_lookup_returns_the_registered_class():
    for name, cls in IMPLEMENTATIONS.items():
        assert get_implementation(name) is cls


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'; valid names: naive, sdpa"):
        get_backend("fast")


def test_backends_include_the_core_set():
    assert {"naive", "sdpa", "sdpa_mask", "flex"} <= set(BACKENDS)


def test_flex_is_available_forward_but_not_backward_on_cpu():
    assert "flex" in available_implementations("cpu", "forward")
    assert "flex" not in available_implementations("cpu", "backward")
    assert unsupported_reason("flex", "cpu", "backward") == "has no backward pass on cpu"
    assert unsupported_reason("flex", "cuda", "backward") is None


def test_capabilities_report_missing_packages_and_devices():
    caps = Capabilities(requires=("surely_not_a_module_xyz",), devices=("cuda",))
    assert "surely_not_a_module_xyz" in caps.unavailable_reason()
    assert Capabilities(devices=("cuda",)).unsupported_reason("cpu") == "runs only on cuda, not cpu"
