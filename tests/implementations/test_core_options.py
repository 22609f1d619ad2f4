"""The window, softcap and sinks helpers of the written-out cores (ch03, einsum), on small known cases."""

import torch

from attnlab.implementations.core_options import outside_window, softcap_scores, softmax_with_sinks


def test_the_window_counts_back_from_each_querys_absolute_position():
    # 2 new queries at positions 3 and 4 of 5 keys (KV-cache decoding), window 2: keys {2, 3} and {3, 4}.
    hidden = outside_window(2, 5, window=2)  # (t_q, t_k)
    expected = torch.tensor([[True, True, False, False, False], [True, True, True, False, False]])
    assert torch.equal(hidden, expected)  # the future is the causal mask's job, not the window's


def test_softcap_bounds_the_scores_and_keeps_small_ones():
    scores = torch.tensor([-100.0, -0.01, 0.0, 0.01, 100.0], dtype=torch.float64)
    capped = softcap_scores(scores, 5.0)
    assert capped.abs().max() <= 5.0 and capped[0] < -4.99 and capped[-1] > 4.99
    # tanh(x) = x - x^3/3 + ...: relative change of 0.01 under cap 5 is (0.01/5)^2 / 3 = 1.3e-6
    assert torch.allclose(capped[1:4], scores[1:4], rtol=2e-6, atol=0)


def test_a_sink_joins_the_denominator_and_takes_no_share():
    scores = torch.tensor([[0.0, float("-inf"), 1.0]], dtype=torch.float64)  # (1, t_k), one hidden key
    sink = torch.tensor([[0.5]], dtype=torch.float64)  # (1, 1)
    weights = softmax_with_sinks(scores, sink)
    denominator = 1 + 0 + torch.e + torch.exp(torch.tensor(0.5, dtype=torch.float64))
    expected = torch.tensor([[1.0, 0.0, torch.e]], dtype=torch.float64) / denominator
    assert torch.allclose(weights, expected, rtol=1e-12, atol=0)  # float64: exact up to a few ulps
    assert torch.equal(softmax_with_sinks(scores, None), torch.softmax(scores, dim=-1))
