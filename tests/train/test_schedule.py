"""The learning-rate schedule: linear warm-up from lr / warmup to lr, then a cosine down to min_lr."""

from __future__ import annotations

import itertools
import math

import pytest

from attnlab.train.schedule import learning_rate


def _lr(step: int) -> float:
    return learning_rate(step, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)


def test_warmup_is_linear_and_reaches_the_peak():
    assert [_lr(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0], rel=1e-12)


def test_cosine_decays_from_peak_to_floor():
    assert _lr(4) == pytest.approx(1.0, rel=1e-12)  # decay starts at the peak
    # half-way through the 9 decay intervals (steps 4..13) the rate is the mean of peak and floor
    assert learning_rate(8, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=13) == pytest.approx(0.55, rel=1e-12)
    assert _lr(13) == pytest.approx(0.1, rel=1e-12)  # the last step is at the floor
    assert _lr(6) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 2 / 9)), rel=1e-12)
    rates = [_lr(s) for s in range(4, 14)]
    assert all(a > b for a, b in itertools.pairwise(rates)), "strictly decreasing after warm-up"


def test_no_warmup_starts_at_the_peak():
    assert learning_rate(0, lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=5) == pytest.approx(2.0, rel=1e-12)
    assert learning_rate(4, lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=5) == pytest.approx(0.0, abs=1e-12)
