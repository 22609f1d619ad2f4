"""check_implementations: passes correct implementations, catches a wrong one, refuses bad input before work."""

import dataclasses
import re

import pytest
import torch

from attnlab import BACKENDS, IMPLEMENTATIONS, check, memory_guard
from attnlab.check import FORWARD_TOL, GRAD_TOL, CheckConfig, check_implementations
from attnlab.implementations.einsum import EinsumAttention
from attnlab.implementations.fused_qkv import FusedQKVAttention
from attnlab.implementations.sdpa import SDPAAttention
from attnlab.memory_guard import AvailableMemory


def test_correct_implementations_pass_with_small_errors():
    results = check_implementations(["ch03", "sdpa", "torch_mha"], seq_len=5)
    assert [r.name for r in results] == ["ch03", "sdpa", "torch_mha"]
    for r in results:
        assert r.status == "pass"
        assert 0 <= r.forward_err <= FORWARD_TOL
        assert r.input_grad_err is not None and r.weight_grad_err is not None


def test_flex_passes_forward_and_says_why_gradients_are_missing():
    (result,) = check_implementations(["flex"], seq_len=5)
    assert result.status == "pass"
    assert result.input_grad_err is None
    assert "no backward pass on cpu" in result.note


class _NotCausal(SDPAAttention):
    """A deliberately wrong implementation: it lets queries see the future."""

    def attend(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no causal mask
        return self.out_proj(self.merge_heads(out))


def test_a_wrong_implementation_fails(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "not_causal", _NotCausal)
    (result,) = check_implementations(["not_causal"], seq_len=6)
    assert result.status == "fail"
    assert result.forward_err > 1e-3


def test_unknown_name_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown attention implementation 'bogus'"):
        check_implementations(["sdpa", "bogus"])


OPTIONS = {"num_kv_heads": 2, "window": 3, "softcap": 2.0, "sinks": True}


def test_the_modern_options_pass_or_are_skipped_with_a_reason():
    names = ["wrapper", "ch03", "einsum", "fused_qkv", "sdpa"]
    results = {r.name: r for r in check_implementations(names, seq_len=6, **OPTIONS)}
    for name in ("einsum", "fused_qkv"):
        assert results[name].status == "pass", results[name]
        assert results[name].weight_grad_err is not None and results[name].weight_grad_err <= GRAD_TOL
    for name, option in (("wrapper", "num_kv_heads"), ("ch03", "num_kv_heads"), ("sdpa", "window")):
        assert results[name].status == "skipped" and results[name].note == f"does not support {option}"


class _IgnoresSinks(FusedQKVAttention):
    """A deliberately wrong implementation: it has a sinks parameter but never passes it to the backend."""

    def _attend_heads(self, queries, keys, values):
        context_vec = BACKENDS[self.backend].attend(queries, keys, values, self.spec)  # (b, h, t, hd), no sinks
        return self.out_proj(self.merge_heads(context_vec))


class _ExportsNoSinks(EinsumAttention):
    """A deliberately wrong implementation: right forward, but its exported gradients leave the sinks out."""

    def _export(self, pick):
        return dataclasses.replace(super()._export(pick), sinks=None)


def test_ignoring_the_sinks_fails(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "ignores_sinks", _IgnoresSinks)
    (result,) = check_implementations(["ignores_sinks"], seq_len=6, sinks=True)
    assert result.status == "fail" and result.forward_err > 1e-3


def test_a_missing_sinks_gradient_fails(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "exports_no_sinks", _ExportsNoSinks)
    (result,) = check_implementations(["exports_no_sinks"], seq_len=6, sinks=True)
    assert result.status == "fail" and result.weight_grad_err == float("inf")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": 0}, "num_heads must be a positive integer, got 0"),
        ({"batch": 0}, "batch must be a positive integer, got 0"),
        ({"d_in": 0}, "d_in must be a positive integer, got 0"),
        ({"seq_len": -3}, "seq_len must be a positive integer, got -3"),
        ({"d_out": 30, "num_heads": 4}, "d_out 30 is not divisible by num_heads 4"),
        ({"seed": 2**64}, "seed must be an integer from -2**63 to 2**64 - 1"),
        ({"device": "gpu0"}, "unknown device 'gpu0'"),
        ({"device": "meta"}, "unsupported device 'meta'"),
        ({"impls": ()}, "no implementation selected"),
        ({"impls": ("sdpa", "sdpa")}, "implementation names repeat: sdpa, sdpa"),
    ],
)
def test_bad_config_is_refused_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CheckConfig(**overrides)


def test_an_empty_selection_checks_nothing_and_is_an_error():
    with pytest.raises(ValueError, match="no implementation selected"):
        check_implementations([])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        check_implementations(["sdpa"], device="cuda")


def test_work_that_cannot_fit_in_memory_is_refused_before_it_starts(monkeypatch):
    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(check, "reference_attention", no_reference)
    # 10 million tokens: the float64 reference alone needs petabytes, on any machine.
    with pytest.raises(ValueError, match=r"needs about .* GiB of cpu memory, but only .* GiB is available \("):
        check_implementations(["sdpa"], seq_len=10**7, d_in=8, d_out=8, num_heads=1)


def test_the_refusal_names_the_estimate_and_the_free_memory(monkeypatch):
    monkeypatch.setattr(memory_guard, "available_memory", lambda device: AvailableMemory(2**30, "MemAvailable"))
    message = (
        r"this check \(batch 2, seq_len 100000, d_in 8, d_out 8, num_heads 1\) needs about [\d,.]+ GiB of cpu "
        r"memory, but only 1\.0 GiB is available \(MemAvailable\)"
    )
    with pytest.raises(ValueError, match=message):
        check_implementations(["sdpa"], seq_len=100_000, d_in=8, d_out=8, num_heads=1)
    # The default check is tiny: it fits in that gigabyte.
    CheckConfig(impls=("sdpa",)).require_memory()


def test_d_in_other_than_d_out_skips_torch_mha_with_the_reason():
    results = check_implementations(["sdpa", "torch_mha"], seq_len=4, d_in=6, d_out=8, num_heads=2)
    assert [(r.name, r.status) for r in results] == [("sdpa", "pass"), ("torch_mha", "skipped")]
    assert results[1].note == "needs d_in == d_out (got 6 and 8)"


def test_a_device_limit_found_only_when_running_is_a_skipped_row_not_a_crash():
    # flex declares sinks, but compiled flex returns no log-sum-exp on the CPU: a skipped row saying why.
    (result,) = check_implementations(["flex"], batch=1, seq_len=5, d_in=8, d_out=8, num_heads=2, sinks=True)
    assert result.status == "skipped" and "log-sum-exp" in result.note
