"""Steps print values as the book does, without changing the caller's print options."""

import pytest
import torch

from attnlab.tour.step import StepRecorder, format_value


@pytest.fixture
def two_decimal_printing():
    torch.set_printoptions(precision=2)
    yield
    torch.set_printoptions(profile="default")


def test_tensors_print_with_four_decimals_and_options_are_restored(two_decimal_printing):
    assert format_value(torch.tensor([0.123456, 1.0])) == "tensor([0.1235, 1.0000])"
    assert repr(torch.tensor([0.123456])) == "tensor([0.12])"  # the caller's options still hold


def test_strings_and_sizes():
    assert format_value("mask.device: cpu") == "mask.device: cpu"
    assert format_value(torch.Size([2, 6, 2])) == "torch.Size([2, 6, 2])"


def test_recorder_returns_the_value_and_rejects_a_reused_key():
    rec = StepRecorder("causal")
    x = torch.ones(2)
    assert rec.add("x", "explanation", "x", x) is x
    assert rec.steps[0].section == "causal" and rec.steps[0].text == "tensor([1., 1.])"
    with pytest.raises(ValueError, match="step key 'x' is used twice in section 'causal'"):
        rec.add("x", "again", "x", x)
