"""The registries: lookup by name, clear errors, and capabilities that say what runs here."""

import dataclasses
import re

import pytest

from attnlab import BACKENDS, IMPLEMENTATIONS, available_implementations, get_backend, get_implementation
from attnlab.implementations import Capabilities
from attnlab.implementations.base import FEATURE_OPTIONS
from attnlab.implementations.fused_projection import FusedQKVBackendAttention
from attnlab.registry import implementations_with, unsupported_reason


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


BACKEND_BASED = {name: cls for name, cls in IMPLEMENTATIONS.items() if issubclass(cls, FusedQKVBackendAttention)}


def test_the_backend_based_implementations_are_the_fused_family():
    assert set(BACKEND_BASED) == {"fused_qkv", "sdpa", "sdpa_mask", "flex", "flash_torch", "flash_triton"}


@pytest.mark.parametrize("name", BACKEND_BASED)
def test_backend_based_capabilities_are_the_backends_declarations(name):
    cls = BACKEND_BASED[name]
    backend = BACKENDS[cls.backend]
    assert cls.capabilities.features == backend.features & set(FEATURE_OPTIONS)
    assert cls.capabilities.dropout == ("dropout" in backend.features)
    assert cls.capabilities.no_backward_on == backend.no_backward_on
    assert cls.capabilities.requires == backend.requires
    for device_type in ("cpu", "cuda", "mps"):
        for mode in ("forward", "backward"):
            assert cls.capabilities.unsupported_reason(device_type, mode) == backend.unsupported_reason(
                device_type, mode
            )


def test_a_backend_gaining_a_feature_gives_it_to_its_modules(monkeypatch):
    # What a backend declares is read when the module class is defined: nothing to repeat by hand.
    narrowed = dataclasses.replace(BACKENDS["naive"], features=frozenset({"gqa"}))
    monkeypatch.setitem(BACKENDS, "naive", narrowed)

    class GQAOnly(FusedQKVBackendAttention):
        backend = "naive"

    assert GQAOnly.capabilities.features == {"gqa"}
    GQAOnly(d_in=8, d_out=8, num_heads=4, context_length=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="GQAOnly does not support window; got window=2"):
        GQAOnly(d_in=8, d_out=8, num_heads=4, context_length=4, window=2)
    with pytest.raises(ValueError, match=re.escape("GQAOnly does not support dropout; got dropout=0.1")):
        GQAOnly(d_in=8, d_out=8, num_heads=4, context_length=4, dropout=0.1)


def test_a_module_naming_an_unknown_backend_fails_when_defined():
    with pytest.raises(ValueError, match=re.escape("Bogus.backend 'bogus' is not one of: naive, sdpa")):

        class Bogus(FusedQKVBackendAttention):
            backend = "bogus"


def test_implementations_with_lists_those_that_declare_the_feature():
    for feature in FEATURE_OPTIONS:
        able = implementations_with(feature)
        assert able == [name for name, cls in IMPLEMENTATIONS.items() if feature in cls.capabilities.features]
    assert "einsum" in implementations_with("gqa") and "wrapper" not in implementations_with("gqa")
    with pytest.raises(ValueError, match="unknown implementation feature 'alibi'; known: gqa, window"):
        implementations_with("alibi")


def test_unsupported_reason_takes_the_requested_features():
    assert unsupported_reason("wrapper", "cpu", "forward", ("gqa",)) == "does not support num_kv_heads"
    assert unsupported_reason("einsum", "cpu", "forward", ("gqa", "window", "softcap", "sinks")) is None
    assert unsupported_reason("sdpa", "cpu", "forward", ("gqa", "sinks")) == "does not support sinks"
    assert "wrapper" not in available_implementations("cpu", "forward", ("window",))
    with pytest.raises(ValueError, match="unknown features"):
        unsupported_reason("einsum", "cpu", "forward", ("seq_lens",))


def test_backends_say_why_they_cannot_run():
    assert BACKENDS["flex"].unsupported_reason("cpu", "backward") == "has no backward pass on cpu"
    assert BACKENDS["flex"].unsupported_reason("cuda", "backward") is None
    assert BACKENDS["naive"].unsupported_reason("mps", "backward") is None
    assert "not mps" in BACKENDS["flash_triton"].device_reason("mps")
