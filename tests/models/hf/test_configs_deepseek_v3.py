"""The deepseek_v3 converter: what it reads from config.json, and what it refuses by name."""

from __future__ import annotations

import pytest

from attnlab.models.hf.configs import config_from_hf

BASE = {
    "model_type": "deepseek_v3",
    "vocab_size": 97,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 96,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "kv_lora_rank": 16,
    "q_lora_rank": 24,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4,
    "v_head_dim": 6,
    "head_dim": 4,
    "qk_head_dim": 12,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 16,
    "n_shared_experts": 1,
    "n_group": 2,
    "topk_group": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "first_k_dense_replace": 1,
    "rope_interleave": True,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 24,
        "mscale": 1.0,
        "mscale_all_dim": 0.8,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "num_nextn_predict_layers": 1,
}


def test_deepseek_v3_fields():
    config = config_from_hf(BASE)
    assert config.mla is not None and config.mla.q_lora_rank == 24 and config.mla.kv_lora_rank == 16
    assert (config.mla.qk_nope_head_dim, config.mla.qk_rope_head_dim, config.mla.v_head_dim) == (8, 4, 6)
    assert config.head_dim == 12 and config.num_kv_heads == 4
    rope = config.rope
    assert (rope.rope_type, rope.factor, rope.original_context_length) == ("yarn", 4.0, 24)
    assert (rope.mscale, rope.mscale_all_dim, rope.interleaved) == (1.0, 0.8, True)
    moe = config.moe
    assert config.ffn == "moe" and moe.router == "sigmoid_group"
    assert (moe.num_experts, moe.top_k, moe.d_expert, moe.num_shared_experts) == (8, 2, 16, 1)
    assert (moe.num_groups, moe.topk_group, moe.routed_scaling, moe.normalize_topk) == (2, 1, 2.5, True)
    assert moe.dense_layers == 1


def test_deepseek_v3_without_query_bottleneck_or_shared_experts():
    config = config_from_hf({**BASE, "q_lora_rank": None, "n_shared_experts": None, "rope_interleave": False})
    assert config.mla.q_lora_rank is None and config.moe.num_shared_experts == 0
    assert config.rope.interleaved is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"topk_method": "greedy"}, "topk_method='greedy' is not supported"),
        ({"scoring_func": "softmax"}, "scoring_func='softmax' is not supported"),
        ({"num_key_value_heads": 2}, "num_key_value_heads 2 must equal num_attention_heads 4"),
        ({"head_dim": 12}, "head_dim must be 4"),
        ({"qk_head_dim": 10}, "qk_head_dim must be 12"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"moe_layer_freq": 2}, "moe_layer_freq=2 is not supported"),
        ({"rope_parameters": {**BASE["rope_parameters"], "factor": None}}, "yarn rope parameters without factor"),
        ({"kv_lora_rank": 0}, "kv_lora_rank must be an integer >= 1"),
        ({"some_new_field": 3}, "some_new_field"),
        ({"n_routed_experts": None}, "n_routed_experts is missing"),
        ({"n_group": 3}, "num_groups 3 must divide num_experts 8"),
    ],
)
def test_deepseek_v3_refusals(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**BASE, **change})
