"""run_benchmark: statuses, sane values, registry-driven rows, failures that become rows."""

import math

import pytest
import torch
from bench_sizes import TINY

from attnlab.bench import BenchConfig, DevicePeak, Sweep, attention_flops, run_benchmark, runner
from attnlab.bench.attention_case import AttentionCase
from attnlab.bench.runner import rank_rows
from attnlab.implementations import IMPLEMENTATIONS, Capabilities
from attnlab.implementations.sdpa import SDPAAttention
from attnlab.memory_guard import AvailableMemory


def test_tiny_run_rows_are_timed_checked_and_measured(tiny_result):
    rows = tiny_result.rows
    assert [(r.impl, r.mode, r.status) for r in rows] == [
        ("sdpa", "forward", "ok"),
        ("ch03", "forward", "ok"),
        ("sdpa", "backward", "ok"),
        ("ch03", "backward", "ok"),
    ]
    peak = tiny_result.header.peak_gflops
    assert peak > 0
    for row in rows:
        assert row.median_ms > 0
        assert row.p25_ms <= row.median_ms <= row.p75_ms
        assert row.iqr_ms == pytest.approx(row.p75_ms - row.p25_ms)
        assert row.num_samples >= TINY["min_samples"]
        expected_flops = attention_flops(batch=2, seq_len=32, d_model=32, num_heads=4, mode=row.mode)
        assert row.flops == expected_flops
        assert row.gflops == pytest.approx(expected_flops / (row.median_ms / 1e3) / 1e9)
        if row.gflops <= peak:
            assert row.peak_fraction == pytest.approx(row.gflops / peak)
        else:  # faster than the measured "peak" (a small matmul here): no share above 100 %, a note instead
            assert row.peak_fraction is None and "above the measured peak" in row.note
        # float32 vs the float64 reference at d_model 32: ~1e-7; 1e-5 is check.py's forward tolerance.
        assert 0 <= row.max_abs_err < 1e-5
        assert isinstance(row.peak_mem_bytes, int) and row.peak_mem_bytes >= 0
        assert (row.device, row.dtype, row.compiled) == ("cpu", "float32", False)


def test_speedup_is_relative_to_the_slowest_of_each_mode(tiny_result):
    for mode in ("forward", "backward"):
        rows = [r for r in tiny_result.rows if r.mode == mode]
        slowest = max(rows, key=lambda r: r.median_ms)
        assert slowest.speedup == pytest.approx(1.0)
        for row in rows:
            assert row.speedup == pytest.approx(slowest.median_ms / row.median_ms)


def test_progress_counts_up_to_the_total(tiny_run):
    _, events = tiny_run
    total = events[0][1]
    assert total == 1 + 4  # the peak measurement, then 2 implementations x 2 modes
    assert [done for done, _, _ in events] == list(range(total + 1))
    assert events[-1][2] == "done"


def test_header_describes_machine_and_method(tiny_result):
    header = tiny_result.header
    assert header.torch_version == torch.__version__
    assert header.num_threads == torch.get_num_threads()
    assert header.device == "cpu" and header.device_name
    assert "256x256" in header.peak_method
    assert "RSS" in header.memory_method
    assert header.config["impls"] == ["sdpa", "ch03"]


def _run(impls, **overrides):
    config = BenchConfig(impls=impls, device="cpu", measure_memory=False, **{**TINY, **overrides})
    return run_benchmark(config).rows


def test_flex_backward_on_cpu_is_a_row_marked_unsupported():
    (row,) = _run(("flex",), modes=("backward",))
    assert row.status == "unsupported"
    assert "backward" in row.note and "cpu" in row.note
    assert row.median_ms is None and row.speedup is None


class _WrongScale(SDPAAttention):
    """Correct shapes, wrong numbers: 10% too large."""

    def attend(self, x):
        return 1.1 * super().attend(x)


class _Crashes(SDPAAttention):
    def attend(self, x):
        raise RuntimeError("kernel exploded")


class _OutOfMemory(SDPAAttention):
    def attend(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")


class _NeedsMissingPackage(SDPAAttention):
    capabilities = Capabilities(requires=("attnlab_no_such_package",))


def test_bad_implementations_become_rows_and_the_run_goes_on(monkeypatch):
    for name, cls in (
        ("wrong", _WrongScale),
        ("crash", _Crashes),
        ("oom", _OutOfMemory),
        ("missing", _NeedsMissingPackage),
    ):
        monkeypatch.setitem(IMPLEMENTATIONS, name, cls)
    rows = _run(("wrong", "crash", "oom", "missing", "sdpa"), modes=("forward",))
    by_name = {row.impl: row for row in rows}
    assert by_name["wrong"].status == "failed"
    assert by_name["wrong"].max_abs_err > by_name["wrong"].tolerance
    assert by_name["wrong"].median_ms is None and by_name["wrong"].speedup is None  # not timed, not ranked
    assert by_name["crash"].status == "error" and "kernel exploded" in by_name["crash"].note
    assert by_name["oom"].status == "oom"
    assert by_name["missing"].status == "unavailable" and "attnlab_no_such_package" in by_name["missing"].note
    assert by_name["sdpa"].status == "ok" and by_name["sdpa"].speedup == pytest.approx(1.0)


def test_implementations_registered_later_are_benchmarked_by_default(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "added_later", SDPAAttention)
    config = BenchConfig(device="cpu", measure_memory=False, **TINY)
    assert config.impl_names[-1] == "added_later"
    assert set(config.impl_names) == set(IMPLEMENTATIONS)


def test_sweep_gives_one_row_per_value_with_the_swept_size():
    rows = _run(("sdpa",), modes=("forward",), sweep=Sweep("seq_len", (8, 16)))
    assert [(r.seq_len, r.status) for r in rows] == [(8, "ok"), (16, "ok")]
    assert rows[0].flops < rows[1].flops


def test_absent_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=r"cuda.*not available"):
        run_benchmark(BenchConfig(impls=("sdpa",), device="cuda", **TINY))


def test_rank_rows_ignores_rows_that_were_not_timed(tiny_result):
    rows = [r for r in tiny_result.rows if r.mode == "forward"]
    for row in rows:
        row.speedup = None
    rows[0].status, rows[0].median_ms = "error", None
    rank_rows(rows)
    assert rows[0].speedup is None
    assert rows[1].speedup == pytest.approx(1.0)
    assert math.isfinite(rows[1].median_ms)


def test_compile_adds_a_compiled_row_with_its_compile_time():
    rows = _run(("sdpa",), modes=("forward",), compile=True)
    assert [(r.label, r.status) for r in rows] == [("sdpa", "ok"), ("sdpa (compiled)", "ok")]
    assert rows[0].compile_s is None
    assert rows[1].compile_s >= 0  # reported apart: the compiled row's median excludes it
    assert rows[1].max_abs_err < 1e-5  # the compiled module computes the same function (float32, see above)


def _case(impl, **sizes):
    values = {"batch": 2, "seq_len": 64, "d_model": 32, "num_heads": 4, **sizes}
    return AttentionCase(impl, "forward", False, "cpu", "float32", seed=0, **values)


def test_a_case_too_large_for_memory_becomes_an_oom_row_without_running(monkeypatch):
    # Room for sdpa's case (tiled: no t x t scores) but not for ch03's (dense: four (b, h, t, t) copies).
    room = _case("sdpa").memory_bytes + 1
    assert _case("ch03").memory_bytes > room
    monkeypatch.setattr(runner, "available_memory", lambda device: AvailableMemory(room, "a test"))
    rows = _run(("sdpa", "ch03"), modes=("forward",), seq_len=64)
    by_name = {row.impl: row for row in rows}
    assert by_name["sdpa"].status == "ok"
    assert by_name["ch03"].status == "oom" and by_name["ch03"].median_ms is None
    assert by_name["ch03"].note.startswith("not run: needs about") and "available (a test)" in by_name["ch03"].note


def test_a_run_where_no_case_fits_is_refused_before_any_work(monkeypatch):
    def no_peak(*args, **kwargs):
        raise AssertionError("the peak was measured")

    monkeypatch.setattr(runner, "measure_peak", no_peak)
    # A trillion sequences: no machine holds the input, whatever the implementation.
    with pytest.raises(ValueError, match=r"no case of this benchmark fits in memory: the smallest \(sdpa forward"):
        _run(("sdpa", "ch03"), modes=("forward",), batch=10**12)


def test_rows_faster_than_the_measured_peak_get_no_share_of_peak_but_a_note(monkeypatch):
    def tiny_peak(device, dtype, **kwargs):  # a "peak" no row can stay under: as a slow float16 matmul gives
        return DevicePeak(gflops=1e-9, matmul_size=64, dtype="float32", median_s=1.0)

    monkeypatch.setattr(runner, "measure_peak", tiny_peak)
    config = BenchConfig(impls=("sdpa",), device="cpu", measure_memory=False, modes=("forward",), **TINY)
    result = run_benchmark(config)
    (row,) = result.rows
    assert row.status == "ok" and row.gflops > 1e-9
    assert row.peak_fraction is None  # never a share above 100 %
    assert "above the measured peak" in row.note and "unreliable" in row.note
    assert result.header.peak_warning.startswith("peak measurement unreliable: sdpa ran faster than")


def test_progress_names_the_peak_matmul_before_measuring_it(tiny_run):
    _, events = tiny_run
    assert events[0][:2] == (0, 5) and "256x256 float32 matmul" in events[0][2]
