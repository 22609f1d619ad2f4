"""Every backend rejects bad tensors and options with a clear ValueError, before any work."""

import re

import pytest
import torch

from attnlab import BACKENDS


def qkv(dtype=torch.float32, **overrides):
    tensors = {name: torch.randn(1, 2, 3, 4).to(dtype) for name in "qkv"}
    tensors.update(overrides)
    return tensors["q"], tensors["k"], tensors["v"]


@pytest.mark.parametrize("name", BACKENDS)
def test_mixed_dtypes(name):
    q, k, v = qkv(k=torch.randn(1, 2, 3, 4, dtype=torch.float64))
    message = "q, k and v must share one dtype, got torch.float32, torch.float64"
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name](q, k, v)


@pytest.mark.parametrize("name", BACKENDS)
def test_integer_tensors(name):
    with pytest.raises(ValueError, match=re.escape("q, k and v must be floating point, got torch.int64")):
        BACKENDS[name](*qkv(torch.int64))


@pytest.mark.parametrize("name", BACKENDS)
def test_mixed_devices(name):
    q, k, v = qkv(v=torch.randn(1, 2, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="q, k and v must be on one device, got cpu, cpu and meta"):
        BACKENDS[name](q, k, v)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale(name, scale):
    with pytest.raises(ValueError, match=re.escape(f"scale must be a finite number > 0, got {scale!r}")):
        BACKENDS[name](*qkv(), scale=scale)


@pytest.mark.parametrize("name", BACKENDS)
def test_causal_must_be_a_bool(name):
    with pytest.raises(ValueError, match="causal must be True or False, got 'no'"):
        BACKENDS[name](*qkv(), causal="no")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dropout_p", [-0.1, 1.0])
def test_dropout_out_of_range(name, dropout_p):
    with pytest.raises(ValueError, match=re.escape(f"dropout_p {dropout_p} must be in [0, 1)")):
        BACKENDS[name](*qkv(), dropout_p=dropout_p)


@pytest.mark.parametrize("name", BACKENDS)
def test_zero_head_dim(name):
    empty = torch.randn(1, 2, 3, 0)
    with pytest.raises(ValueError, match="head_dim must be at least 1, got 0"):
        BACKENDS[name](empty, empty, empty)
