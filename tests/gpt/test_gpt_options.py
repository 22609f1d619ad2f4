"""GenerationOptions: every generation argument is checked at construction, before any model is loaded."""

import math

import pytest
import torch

from attnlab.gpt.options import GenerationOptions, check_runnable, resolve_generation_device


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer, got -1"),
        ({"max_new_tokens": 2.0}, "max_new_tokens must be a non-negative integer, got 2.0"),
        ({"max_new_tokens": True}, "max_new_tokens must be a non-negative integer, got True"),
        ({"temperature": -0.5}, r"temperature must be >= 0 \(0 is greedy\) and finite, got -0\.5"),
        ({"temperature": math.nan}, "temperature must be >= 0 .* got nan"),
        ({"temperature": math.inf}, "temperature must be >= 0 .* got inf"),
        ({"temperature": "1"}, r"temperature must be a number >= 0 \(0 is greedy\), got '1'"),
        ({"top_k": 0}, "top_k must be a positive integer or None, got 0"),
        ({"top_k": 1.5}, "top_k must be a positive integer or None, got 1.5"),
        ({"eos_id": -3}, r"eos_id must be a token id \(an integer >= 0\) or None, got -3"),
        ({"use_cache": 1}, "use_cache must be True or False, got 1"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\), got -1"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
    ],
)
def test_bad_options_are_refused_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        GenerationOptions(**fields)


def test_good_options_give_the_generate_arguments_and_a_seeded_generator():
    options = GenerationOptions(max_new_tokens=0, temperature=1e-300, top_k=10**9, eos_id=0, seed=2**64 - 1)
    assert options.generate_kwargs() == {"temperature": 1e-300, "top_k": 10**9, "eos_id": 0, "use_cache": True}
    first = torch.rand(3, generator=options.make_generator(torch.device("cpu")))
    assert torch.equal(first, torch.rand(3, generator=options.make_generator(torch.device("cpu"))))


@pytest.mark.parametrize("name", ["xyz", "", "cpu:abc", "cuda:-1", "CPU"])
def test_device_names_that_are_not_devices_are_value_errors(name):
    with pytest.raises(ValueError, match=r"unknown device|not available|unsupported device"):
        resolve_generation_device(name)


def test_check_runnable_names_what_is_missing():
    with pytest.raises(ValueError, match="unknown attention implementation 'nope'"):
        check_runnable("nope", torch.device("cpu"), use_cache=False)
    with pytest.raises(ValueError, match="'wrapper' has no KV-cache path"):
        check_runnable("wrapper", torch.device("cpu"), use_cache=True)
    check_runnable("wrapper", torch.device("cpu"), use_cache=False)
