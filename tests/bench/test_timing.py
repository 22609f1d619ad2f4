"""time_callable: quartiles in order, enough samples, at least the time the callable surely takes."""

import time

import pytest
import torch

from attnlab.bench import time_callable


def test_timer_reports_median_and_quartiles_of_enough_samples():
    timing = time_callable(lambda: time.sleep(0.002), torch.device("cpu"), min_run_time=0.01, min_samples=4)
    assert timing.num_samples >= 4
    assert timing.p25_s <= timing.median_s <= timing.p75_s
    assert timing.iqr_s == pytest.approx(timing.p75_s - timing.p25_s)
    # time.sleep(0.002) never returns early: a lower bound that holds on any machine, however busy.
    assert timing.median_s >= 0.002


@pytest.mark.parametrize(("option", "value"), [("min_run_time", 0.0), ("min_samples", 0)])
def test_bad_budget_is_refused(option, value):
    with pytest.raises(ValueError, match=option):
        time_callable(lambda: None, torch.device("cpu"), **{option: value})


@pytest.mark.parametrize("seconds", [float("inf"), float("nan")])
def test_a_budget_that_never_ends_is_refused_before_any_call(seconds):
    calls = []

    def fn():  # a timer given an endless budget would call this forever: stop it after a while
        calls.append(None)
        if len(calls) > 10_000:
            raise RuntimeError("still timing after 10000 calls")

    with pytest.raises(ValueError, match="min_run_time must be a finite number of seconds"):
        time_callable(fn, torch.device("cpu"), min_run_time=seconds)
    assert calls == []
