"""The attention workload: the seed's weights in every implementation, steps that do what their mode says."""

import pickle
from functools import partial

import torch

from attnlab.bench.attention_case import AttentionCase, case_inputs, make_step, prepare


def _case(impl="einsum", mode="forward"):
    return AttentionCase(impl, mode, False, "cpu", "float32", 2, 8, 16, 4, seed=3)


def test_every_implementation_gets_the_seed_weights():
    expected, _ = case_inputs(_case())
    for impl in ("wrapper", "einsum", "torch_mha"):
        weights = prepare(_case(impl)).module.get_weights()
        torch.testing.assert_close(weights.W_query, expected.W_query, rtol=0, atol=0)  # copied, not computed
        torch.testing.assert_close(weights.W_out, expected.W_out, rtol=0, atol=0)


def test_forward_step_builds_no_graph():
    out = prepare(_case(mode="forward")).step()
    assert out.shape == (2, 8, 16) and not out.requires_grad


def test_backward_step_gives_fresh_gradients_each_call():
    prepared = prepare(_case(mode="backward"))
    param = next(prepared.module.parameters())
    accumulated = []  # the parameter's gradient right after each backward pass has accumulated it
    param.register_post_accumulate_grad_hook(lambda p: accumulated.append(p.grad.clone()))
    prepared.step()
    prepared.step()
    assert len(accumulated) == 2 and accumulated[0].abs().sum() > 0
    # Same input, same weights: the same gradient, not twice it (gradients start afresh each call) ...
    torch.testing.assert_close(accumulated[1], accumulated[0], rtol=0, atol=0)
    # ... and are freed after it, so the memory meter sees them allocated inside the measured call.
    assert all(p.grad is None for p in prepared.module.parameters())


def test_case_pickles_for_the_memory_worker():
    make = pickle.loads(pickle.dumps(partial(make_step, _case())))
    assert make()().shape == (2, 8, 16)
