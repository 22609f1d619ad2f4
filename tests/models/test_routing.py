"""The routers of attnlab.models.routing: hand-built cases, DeepSeek-V3's router in transformers, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.models import MoEConfig
from attnlab.models.routing import Router


def _identity_router(moe: MoEConfig) -> Router:
    """A router whose logits are the token's features (d_model = num_experts, weight = identity, no bias)."""
    router = Router(moe, moe.num_experts)
    with torch.no_grad():
        router.weight.copy_(torch.eye(moe.num_experts))
        if router.bias is not None:
            router.bias.zero_()
    return router


def test_softmax_topk_picks_the_largest_logits_and_softmaxes_over_them():
    router = _identity_router(MoEConfig(num_experts=4, top_k=2, d_expert=8, expert_bias=True))
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0], [4.0, -1.0, 0.5, 2.0]])
    weights, chosen = router(x)
    assert chosen.tolist() == [[1, 2], [0, 3]]
    expected = torch.stack([torch.softmax(torch.tensor([3.0, 2.0]), 0), torch.softmax(torch.tensor([4.0, 2.0]), 0)])
    torch.testing.assert_close(weights, expected)  # float32 softmax of the same numbers: default tolerances


def test_softmax_topk_without_normalisation_keeps_the_full_softmax_probabilities():
    router = _identity_router(MoEConfig(num_experts=4, top_k=2, d_expert=8, normalize_topk=False, routed_scaling=2.0))
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    weights, chosen = router(x)
    assert chosen.tolist() == [[1, 2]]
    torch.testing.assert_close(weights, 2.0 * torch.softmax(x, -1)[:, [1, 2]])


def _sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def test_sigmoid_group_keeps_the_best_groups_and_the_correction_bias_only_steers_the_choice():
    moe = MoEConfig(num_experts=8, top_k=2, d_expert=8, router="sigmoid_group", num_groups=4, topk_group=2,
                    routed_scaling=2.5)  # fmt: skip
    router = _identity_router(moe)
    # groups (0,1) (2,3) (4,5) (6,7); sigmoid sums of each group's two experts: 1.00, 1.28, 1.33, 0.24.
    # Expert 0 has the best score of all, but its group is weak: groups 1 and 2 are kept, then experts 2 and 5 win.
    x = torch.tensor([[3.0, -3.0, 1.0, 0.2, 0.5, 0.9, -2.0, -2.0]])
    weights, chosen = router(x)
    order = chosen[0].argsort()
    assert chosen[0, order].tolist() == [2, 5]
    s2, s5 = _sigmoid(1.0), _sigmoid(0.9)
    torch.testing.assert_close(weights[0, order], torch.tensor([s2, s5]) / (s2 + s5) * 2.5)
    # +0.5 on expert 3 lifts it above expert 2 for choosing; the weights stay the uncorrected sigmoid scores.
    with torch.no_grad():
        router.e_score_correction_bias[3] = 0.5
    weights, chosen = router(x)
    order = chosen[0].argsort()
    assert chosen[0, order].tolist() == [2, 3]
    s3 = _sigmoid(0.2)
    torch.testing.assert_close(weights[0, order], torch.tensor([s2, s3]) / (s2 + s3) * 2.5)


@pytest.mark.parametrize("normalize", [True, False])
def test_sigmoid_group_matches_transformers_deepseek_v3_router(normalize):
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = transformers.DeepseekV3Config(
        hidden_size=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=normalize,
    )  # fmt: skip
    moe = MoEConfig(num_experts=8, top_k=3, d_expert=4, router="sigmoid_group", num_groups=4, topk_group=2,
                    routed_scaling=2.5, normalize_topk=normalize)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    reference = DeepseekV3TopkRouter(config)
    ours = Router(moe, 16)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(8, 16, generator=generator))
        reference.e_score_correction_bias.copy_(0.3 * torch.randn(8, generator=generator))
        ours.weight.copy_(reference.weight)
        ours.e_score_correction_bias.copy_(reference.e_score_correction_bias)
    x = torch.randn(64, 16, generator=generator)
    _, ref_weights, ref_chosen = reference(x)
    weights, chosen = ours(x)
    ref_order, order = ref_chosen.argsort(-1), chosen.argsort(-1)  # compare as sets: column order means nothing
    assert torch.equal(chosen.gather(-1, order), ref_chosen.gather(-1, ref_order))
    got, expected = weights.gather(-1, order), ref_weights.gather(-1, ref_order)
    # the same float32 operations in the same order: rounding only, far below 1e-6 of the largest weight.
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_bad_moe_configs_are_refused_by_name():
    with pytest.raises(ValueError, match="top_k 5 exceeds num_experts 4"):
        MoEConfig(num_experts=4, top_k=5, d_expert=8)
    with pytest.raises(ValueError, match="num_groups 3 must divide num_experts 8"):
        MoEConfig(num_experts=8, top_k=2, d_expert=8, router="sigmoid_group", num_groups=3)
    with pytest.raises(ValueError, match="softmax_topk needs num_groups=1"):
        Router(MoEConfig(num_experts=8, top_k=2, d_expert=8, num_groups=2), 16)
    with pytest.raises(ValueError, match="top_k 5 exceeds the 4 experts of the topk_group=2 kept groups"):
        Router(MoEConfig(num_experts=8, top_k=5, d_expert=8, router="sigmoid_group", num_groups=4, topk_group=2), 16)
    with pytest.raises(ValueError, match="groups need at least 2 experts"):
        Router(MoEConfig(num_experts=4, top_k=1, d_expert=8, router="sigmoid_group", num_groups=4, topk_group=2), 16)
