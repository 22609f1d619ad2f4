"""The model-level benchmark's rows (values are timings, so only their form is checked, not speed)."""

import math

import pytest
import torch

from attnlab.gpt import GPTConfig
from attnlab.gpt.bench import benchmark_model, model_bench_table
from attnlab.implementations import IMPLEMENTATIONS
from attnlab.registry import unsupported_reason

CONFIG = GPTConfig(vocab_size=64, context_length=32, d_model=32, n_layers=1, n_heads=4)  # dropout 0.1


def test_rows_for_cached_and_recomputing_implementations():
    messages = []
    rows = benchmark_model(
        CONFIG,
        ["sdpa", "wrapper"],
        batch=2,
        prompt_len=8,
        new_tokens=3,
        min_run_time=0.01,
        min_samples=1,
        on_progress=lambda *message: messages.append(message),
    )
    assert [(r.impl, r.status, r.decode_mode) for r in rows] == [
        ("sdpa", "ok", "kv-cache"),
        ("wrapper", "ok", "recompute"),
    ]
    for row in rows:
        assert math.isfinite(row.prefill_tokens_per_s) and row.prefill_tokens_per_s > 0
        assert math.isfinite(row.decode_tokens_per_s) and row.decode_tokens_per_s > 0
        # tokens/s is defined from the median: batch * tokens / seconds
        assert row.decode_tokens_per_s == pytest.approx(2 * 3 / row.decode.median_s)
        assert row.prefill_tokens_per_s == pytest.approx(2 * 8 / row.prefill.median_s)
    assert messages[0] == (0, 4, "sdpa: prefill (warm-up, then timing)")
    assert messages[-1] == (4, 4, "done")
    table = model_bench_table(rows)
    assert table.row_count == 2 and table.columns[0]._cells == ["sdpa", "wrapper"]


def test_bad_sizes_and_names_fail_before_timing():
    with pytest.raises(ValueError, match="prompt_len 30 \\+ new_tokens 3 = 33 exceeds context_length 32"):
        benchmark_model(CONFIG, ["sdpa"], prompt_len=30, new_tokens=3)
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'"):
        benchmark_model(CONFIG, ["sdpa", "nope"], prompt_len=8, new_tokens=2)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        benchmark_model(CONFIG, ["sdpa"], batch=0, prompt_len=8, new_tokens=2)


def test_implementation_that_cannot_run_here_gets_a_skipped_row_with_the_reason():
    unsupported = [name for name in IMPLEMENTATIONS if unsupported_reason(name, "cpu") is not None]
    if not unsupported:
        pytest.skip("every registered implementation runs on this CPU")
    (row,) = benchmark_model(CONFIG, unsupported[:1], prompt_len=4, new_tokens=1, min_run_time=0.01)
    assert row.status == "skipped" and row.note == unsupported_reason(unsupported[0], "cpu")
    assert row.prefill_tokens_per_s is None


def test_a_failing_implementation_becomes_a_row_and_the_run_goes_on(monkeypatch):
    from attnlab.gpt import bench as gpt_bench

    def failing(fn, device, **options):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpt_bench, "time_callable", failing)  # the timing fails after a good warm-up
    config = GPTConfig(vocab_size=50, context_length=16, d_model=16, n_layers=1, n_heads=2)
    rows = gpt_bench.benchmark_model(config, ["sdpa"], prompt_len=4, new_tokens=2, min_run_time=0.01)
    assert [(row.impl, row.status) for row in rows] == [("sdpa", "error")]
    assert "RuntimeError: boom" in rows[0].note


def test_benchmark_leaves_the_callers_random_state_alone():
    from attnlab.gpt.bench import benchmark_model

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    config = GPTConfig(vocab_size=50, context_length=16, d_model=16, n_layers=1, n_heads=2)
    benchmark_model(config, ["sdpa"], prompt_len=4, new_tokens=2, min_run_time=0.01)
    assert torch.equal(torch.rand(3), expected)
