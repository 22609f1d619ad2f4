"""Refusals that need no process group: they come before any communication (and before the group check)."""

from __future__ import annotations

import pytest
import torch

from attnlab.parallel import context_parallel_attention, shard, unshard


def _qkv():
    return torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(strategy="tree"), "unknown strategy 'tree'"),
        (dict(backend="nope"), "unknown backend 'nope'"),
        (dict(backend="sdpa"), "log-sum-exp"),
        (dict(strategy="all_gather", alibi_slopes=torch.ones(2)), "does not support alibi_slopes"),
        (dict(strategy="ring", dropout_p=0.1), "does not support dropout"),
        (dict(window=0), "window must be a positive int"),
    ],
)
def test_bad_options_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        context_parallel_attention(*_qkv(), **options)


def test_without_a_process_group_the_error_says_how_to_start_one():
    if torch.distributed.is_initialized():
        pytest.skip("a process group is running in this process")
    with pytest.raises(ValueError, match="init_process_group"):
        context_parallel_attention(*_qkv())
    with pytest.raises(ValueError, match="init_process_group"):
        shard(torch.zeros(1, 1, 4, 2))
    with pytest.raises(ValueError, match="dim 5 is out of range"):
        unshard(torch.zeros(1, 1, 4, 2), dim=5)


def test_what_the_backend_refuses_is_raised_before_any_communication():
    q, k, v = (t.double() for t in _qkv())  # flash_triton has no float64 kernels
    with pytest.raises(ValueError, match="flash_triton supports"):
        context_parallel_attention(q, k, v, backend="flash_triton")


def test_a_backend_that_cannot_take_the_block_is_refused_before_any_communication():
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))  # 40 local tokens: one block call gets 40 queries
    with pytest.raises(ValueError, match="at most 16"):  # the decoding backend takes a few queries only
        context_parallel_attention(q, k, v, backend="flash_decode_torch", strategy="all_gather")


def test_a_forward_only_backend_is_refused_when_a_gradient_is_wanted():
    q, k, v = (torch.randn(1, 2, 8, 8, requires_grad=True) for _ in range(3))
    with pytest.raises(ValueError, match="the flash_decode_torch backend has no backward pass on cpu"):
        context_parallel_attention(q, k, v, backend="flash_decode_torch")
