"""memory_guard: what is free, how much work needs, and one clear refusal when it cannot fit."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from attnlab import memory_guard
from attnlab.memory_guard import (
    AvailableMemory,
    attention_bytes,
    attention_memory,
    available_memory,
    format_gib,
    memory_shortfall,
    reference_bytes,
    require_memory,
)


def test_cpu_memory_is_known_and_positive():
    available = available_memory("cpu")
    assert available is not None and available.num_bytes > 0 and available.source


def test_without_proc_meminfo_the_fallback_is_sysconf_or_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(memory_guard, "_MEMINFO", tmp_path / "no-meminfo")
    monkeypatch.setattr(memory_guard, "_CGROUP", tmp_path / "no-cgroup")
    available = available_memory("cpu")
    assert available is None or (available.num_bytes > 0 and "sysconf" in available.source)
    monkeypatch.setattr(memory_guard, "_sysconf_available", lambda: None)
    assert available_memory("cpu") is None  # unknown: nothing is refused (see below)
    require_memory(10**30, "cpu", "anything")


def test_a_container_limit_caps_meminfo(monkeypatch, tmp_path):
    (tmp_path / "memory.max").write_text(f"{2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**29}\n")
    monkeypatch.setattr(memory_guard, "_CGROUP", tmp_path)
    monkeypatch.setattr(memory_guard, "_meminfo_available", lambda: 2**40)
    assert available_memory("cpu") == AvailableMemory(2**29, "room under the cgroup memory limit")


def test_refusal_names_the_estimate_and_the_available_memory(monkeypatch):
    monkeypatch.setattr(memory_guard, "available_memory", lambda device: AvailableMemory(2**30, "a test"))
    with pytest.raises(ValueError, match=r"^this run needs about 3\.0 GiB of cpu memory, but only 1\.0 GiB is"):
        require_memory(3 * 2**30, "cpu", "this run")
    require_memory(2**30, "cpu", "this run")  # fits exactly: no error


def test_shortfall_is_none_when_it_fits_or_nothing_is_known():
    assert memory_shortfall(10, AvailableMemory(10, "x"), "cpu") is None
    assert memory_shortfall(10**30, None, "cpu") is None
    assert "needs about" in memory_shortfall(11, AvailableMemory(10, "x"), "cpu")


@pytest.mark.parametrize(
    ("num_bytes", "text"), [(3 * 2**30, "3.0 GiB"), (2**40, "1,024.0 GiB"), (10**30, "9.3e+20 GiB")]
)
def test_format_gib(num_bytes, text):
    assert format_gib(num_bytes) == text
    assert format_gib(10**400) == "more than 1e+290 GiB"  # no OverflowError for absurd requests


def test_cores_are_classified_by_their_backend():
    assert attention_memory("ch03") == "dense"  # computes its own core: the (b, h, t, t) scores
    assert attention_memory("fused_qkv") == "dense"  # the naive backend
    assert attention_memory("sdpa_mask") == "mask"
    assert attention_memory("sdpa") == attention_memory("flash_torch") == "tiled"


def test_dense_cores_grow_with_the_square_of_the_length_and_tiled_ones_do_not():
    def at(impl, t):
        return attention_bytes(impl, batch=1, seq_len=t, d_in=64, d_out=64, num_heads=4, element_size=4, backward=True)

    assert at("ch03", 200_000) > 1000 * 2**30  # 200k tokens of dense attention: terabytes
    assert at("sdpa", 200_000) < 4 * 2**30  # the same length, tiled: activations only
    assert at("ch03", 8192) > at("ch03", 4096) * 3.5  # quadratic


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_the_reference_estimate_bounds_its_measured_peak():
    """The tightest case of the calibration (one head of 32 features): the peak resident set of a fresh process
    running the float64 reference with its backward pass, above its size before, must stay below the estimate.
    (VmHWM, not getrusage: on Linux a child's ru_maxrss starts from its parent's peak.)"""
    t, num_heads, d = 512, 1, 32
    script = textwrap.dedent(f"""
        import torch
        from attnlab.reference import reference_attention
        from attnlab.weights import AttentionWeights
        def status(field):
            line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
            return int(line.split()[1]) * 1024
        torch.set_num_threads(1)
        w = AttentionWeights.random({d}, {d}, True).to(dtype=torch.float64).map_tensors(lambda x: x.requires_grad_())
        x = torch.randn(1, {t}, {d}, dtype=torch.float64, requires_grad=True)
        before = status("VmRSS")
        reference_attention(x, w, {num_heads}).sum().backward()
        print(status("VmHWM") - before)
    """)
    measured = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    estimate = reference_bytes(batch=1, seq_len=t, d_in=d, d_out=d, num_heads=num_heads)
    assert 0 < measured <= estimate


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_is_the_devices_free_memory():
    available = available_memory("cuda")
    assert 0 < available.num_bytes <= torch.cuda.get_device_properties(0).total_memory
