"""attnlab.models.moe: the dispatch loop against a dense reference, DeepSeek-V3's MoE in transformers loaded
through DEEPSEEK_MOE_RULES, gpt-oss's config conversion, and settings that are refused."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.models import DecoderConfig, MoEConfig
from attnlab.models.hf import config_from_hf
from attnlab.models.hf.tensors import DEEPSEEK_MOE_RULES, convert, expected_shape, match
from attnlab.models.moe import ClampedSwiGLUExperts, MoEFeedForward, SwiGLUExperts

D_MODEL = 16


def _config(**moe_fields) -> DecoderConfig:
    moe = MoEConfig(**{"num_experts": 6, "top_k": 2, "d_expert": 8, **moe_fields})
    return DecoderConfig(
        vocab_size=11, d_model=D_MODEL, n_layers=1, num_heads=2, d_ff=24, context_length=8, ffn="moe", moe=moe
    )


def _dense_reference(ffn: MoEFeedForward, tokens: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, combined with a dense (n, E) weight matrix (zero for experts not chosen)."""
    weights, chosen = ffn.router(tokens)  # (n, top_k) each
    dense = torch.zeros(tokens.shape[0], ffn.num_experts, dtype=weights.dtype).scatter_(1, chosen, weights)  # (n, E)
    out = sum(dense[:, e, None] * ffn.experts.run(e, tokens) for e in range(ffn.num_experts))  # (n, d_model)
    if ffn.shared_experts is not None:
        out = out + ffn.shared_experts(tokens)
    return out


@pytest.mark.parametrize(
    "moe_fields",
    [
        dict(expert_bias=True, swiglu_alpha=1.702, swiglu_limit=0.5),  # gpt-oss
        dict(router="sigmoid_group", num_groups=3, topk_group=2, num_shared_experts=2, routed_scaling=2.5),  # DeepSeek
    ],
    ids=["gpt_oss", "deepseek"],
)
def test_moe_equals_dense_loop_reference(moe_fields):
    torch.manual_seed(0)
    ffn = MoEFeedForward(_config(**moe_fields)).double()
    expected_kind = ClampedSwiGLUExperts if "swiglu_alpha" in moe_fields else SwiGLUExperts
    assert isinstance(ffn.experts, expected_kind)
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        got = ffn(x)
        expected = _dense_reference(ffn, x.reshape(15, D_MODEL)).view(3, 5, D_MODEL)
    # float64, the same products summed in another order: rounding of ~1e-16 relative; 1e-12 leaves a wide margin.
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


def _save_tiny_deepseek_v3(directory):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "deepseek_v3", vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8,
        num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=2, first_k_dense_replace=1,
        routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp." in name:
                param.normal_(0.0, 0.3)
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.1)  # a buffer: steers the choice of experts
    model.save_pretrained(directory)
    return model.eval()


def test_deepseek_moe_rules_load_transformers_deepseek_v3_moe(tmp_path):
    pytest.importorskip("transformers")
    from safetensors import safe_open

    reference = _save_tiny_deepseek_v3(tmp_path)
    moe = MoEConfig(num_experts=8, top_k=3, d_expert=16, router="sigmoid_group", num_groups=4, topk_group=2,
                    num_shared_experts=2, routed_scaling=2.5, dense_layers=1)  # fmt: skip
    config = DecoderConfig(
        vocab_size=97, d_model=32, n_layers=2, num_heads=4, d_ff=48, context_length=64, ffn="moe", moe=moe
    )
    ffn = MoEFeedForward(config)
    params = {f"blocks.1.ffn.{name}": param for name, param in ffn.named_parameters()}
    filled = set()
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as checkpoint, torch.no_grad():
        names = [name for name in checkpoint.keys() if name.startswith("model.layers.1.mlp.")]
        for name in names:
            found = match(DEEPSEEK_MOE_RULES, name)
            assert found is not None, f"no rule for {name}"
            rule, locals_ = found
            shapes = [tuple(params[local].shape) for local in locals_]
            tensor = checkpoint.get_tensor(name)
            assert tuple(tensor.shape) == expected_shape(rule, shapes), name
            for local, part in zip(locals_, convert(rule, tensor, shapes), strict=True):
                params[local].copy_(part)
                filled.add(local)
        dense_names = [name for name in checkpoint.keys() if name.startswith("model.layers.0.mlp.")]
    assert filled == set(params)  # every parameter of the MoE comes from the checkpoint
    assert dense_names and all(match(DEEPSEEK_MOE_RULES, name) is None for name in dense_names)  # dense layer
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.model.layers[1].mlp(x)
        got = ffn(x)
    # float32, the same operations grouped differently: rounding only; 1e-5 of the largest output is ~100 ulps.
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def _gpt_oss_config_json(**changes) -> dict:
    data = {
        "model_type": "gpt_oss", "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48,
        "max_position_embeddings": 96, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 5,
        "layer_types": ["sliding_attention", "full_attention"], "rms_norm_eps": 1e-5, "attention_bias": True,
        "swiglu_alpha": 1.702, "swiglu_limit": 7.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096},
    }  # fmt: skip
    data.update(changes)
    return json.loads(json.dumps(data))


def test_gpt_oss_config_conversion():
    config = config_from_hf(_gpt_oss_config_json())
    assert config.ffn == "moe" and config.sinks and config.qkv_bias and config.out_bias
    assert config.layer_windows == (5, None)
    assert config.moe == MoEConfig(
        num_experts=4, top_k=2, d_expert=48, expert_bias=True, swiglu_alpha=1.702, swiglu_limit=7.0
    )
    assert config.rope.rope_type == "yarn" and config.rope.original_context_length == 4096
    assert not config.rope.truncate


def test_gpt_oss_refuses_mxfp4_and_bad_expert_counts():
    quantized = _gpt_oss_config_json(quantization_config={"quant_method": "mxfp4"})
    with pytest.raises(ValueError, match=r"quantization_config \(quant_method 'mxfp4'.*MXFP4"):
        config_from_hf(quantized)
    with pytest.raises(ValueError, match="top_k 5 exceeds num_experts 4"):
        config_from_hf(_gpt_oss_config_json(num_experts_per_tok=5))


def test_moe_settings_that_cannot_be_honoured_are_refused():
    with pytest.raises(ValueError, match=r"swiglu_limit=7\.0 needs swiglu_alpha"):
        MoEFeedForward(_config(swiglu_limit=7.0))
