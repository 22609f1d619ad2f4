"""The training loop on one process: its files, exact resume, and two attention implementations agreeing."""

from __future__ import annotations

import json

import pytest
import torch
from train_cases import final_weights, losses, max_relative_gap, tiny_config

from attnlab.train import train

F32 = torch.finfo(torch.float32).eps


def test_run_writes_log_metrics_checkpoint_and_plot(tmp_path):
    events = []
    metrics = train(tiny_config(out_dir=tmp_path), progress=events.append)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert {"step", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(record)
        assert record["loss"] > 0 and record["tokens_per_s"] > 0
    assert "accuracy" in records[2] and "accuracy" in records[5] and "accuracy" not in records[0]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= saved["accuracy"] <= 1.0 and saved["steps"] == 6
    assert saved["accuracy"] == metrics["accuracy"] == records[-1]["accuracy"]
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "loss.png").stat().st_size > 0
    assert [e["event"] for e in events] == ["start"] + ["log"] * 6 + ["done"]
    assert records[0]["lr"] == pytest.approx(1.5e-3, rel=1e-12)  # warm-up step 1 of 2


class _Crash(Exception):
    pass


def _crash_after(step: int):
    def progress(record):
        if record["event"] == "log" and record["step"] == step:
            raise _Crash

    return progress


def test_resume_gives_the_same_losses_and_weights(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(tiny_config(out_dir=whole))
    with pytest.raises(_Crash):  # killed after step 5: the last checkpoint is the one of step 3
        train(tiny_config(out_dir=parts), progress=_crash_after(5))
    assert len(losses(parts)) == 5
    metrics = train(tiny_config(out_dir=parts, resume=True))
    assert metrics["resumed_from"] == 3
    # the same float32 operations in the same order on the same CPU: bit-identical
    assert losses(parts) == losses(whole)
    assert max_relative_gap(final_weights(whole), final_weights(parts)) == 0.0


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(tiny_config(out_dir=tmp_path, resume=True))
    train(tiny_config(out_dir=tmp_path, steps=3))
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.003 -> 0.001\)"):
        train(tiny_config(out_dir=tmp_path, steps=3, lr=1e-3, resume=True))


def test_two_attention_implementations_learn_the_same_curve(tmp_path):
    train(tiny_config(out_dir=tmp_path / "sdpa", attn_impl="sdpa"))
    train(tiny_config(out_dir=tmp_path / "naive", attn_impl="naive"))
    a, b = losses(tmp_path / "sdpa"), losses(tmp_path / "naive")
    # The two differ by float32 rounding in each attention call (a few ulps); over six AdamW steps that grows
    # to 1.6e-7 of the loss and 7e-5 of the weights' magnitude (measured: AdamW divides each gradient entry by
    # its own RMS, so a small entry's rounding becomes a relative change of its update). A wrong mask or scale
    # would differ in the first digits.
    gap = max(abs(x - y) for x, y in zip(a, b, strict=True)) / max(a)
    assert gap <= 1e3 * F32, f"loss curves differ by {gap:.3g} of the loss"
    assert max_relative_gap(final_weights(tmp_path / "sdpa"), final_weights(tmp_path / "naive")) <= 1e4 * F32
