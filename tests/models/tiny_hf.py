"""Tiny random Hugging Face checkpoints, built with transformers and saved inside the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 97
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=96,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

#: model_type -> the extra config fields of its tiny test model (small windows, so tests cross them).
TINY: dict[str, dict] = {
    "llama": {},
    "llama3_scaled": dict(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    ),
    "mistral": dict(sliding_window=5, head_dim=8),
    "qwen2": dict(),
    "qwen3": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=6, query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=8, sliding_window=5, num_hidden_layers=3, query_pre_attn_scalar=8),
    # 4 experts, top-2; YaRN over an original context of 16 (the tests run past it; factor 6 = 96 / 16, the
    # ratio transformers expects); a clamp low enough that the experts' activations reach it.
    "gpt_oss": dict(
        head_dim=8,
        sliding_window=5,
        num_local_experts=4,
        num_experts_per_tok=2,
        swiglu_limit=0.5,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 6.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 16,
        },
    ),
    # MLA with a query bottleneck, values narrower than queries/keys, interleaved YaRN from 24 to 96 positions
    # (mscale != mscale_all_dim, so both the cos/sin factor and the softmax scale differ from 1 and qk_dim**-0.5).
    # Layer 0 dense, layer 1 a mixture of 8 routed experts in 2 groups (top-2 within the best group) + 1 shared.
    "deepseek_v3": dict(
        num_key_value_heads=4,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,
        first_k_dense_replace=1,
        n_routed_experts=8,
        n_group=2,
        topk_group=1,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 24,
            "mscale": 1.0,
            "mscale_all_dim": 0.8,
        },
    ),
    # MLA without the query bottleneck, values wider than queries/keys, plain rope in halves, biases; all dense.
    "deepseek_v3_plain": dict(
        num_key_value_heads=4,
        kv_lora_rank=12,
        q_lora_rank=None,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=16,
        first_k_dense_replace=2,
        n_routed_experts=8,
        n_group=2,
        topk_group=1,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        rope_interleave=False,
        attention_bias=True,
    ),
}
MODEL_TYPE = {"llama3_scaled": "llama", "deepseek_v3_plain": "deepseek_v3"}


def save_tiny(name: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """Build the tiny ``name`` model (a key of :data:`TINY`, or ``gpt2``) and save it to ``directory``."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    if name == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=96, **overrides)
        model = GPT2LMHeadModel(config)
    else:
        kwargs = {**COMMON, **TINY[name], **overrides}
        if name == "gemma3_text":
            kwargs["num_hidden_layers"] = TINY[name]["num_hidden_layers"]
            kwargs["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention"]
        config = AutoConfig.for_model(MODEL_TYPE.get(name, name), **kwargs)
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random norms and biases too, so that every parameter matters
        for param_name, param in model.named_parameters():
            if "norm" in param_name or "ln_" in param_name or param_name.endswith(("bias", "sinks")):
                param.normal_(0.0, 0.3)
            elif "experts" in param_name or "router" in param_name or ".mlp.gate." in param_name:
                param.normal_(0.0, 0.2)  # experts and routers (DeepSeek's is mlp.gate) that matter next to the biases
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("e_score_correction_bias"):  # DeepSeek's load-balancing bias (chooses experts)
                buffer.normal_(0.0, 0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    return directory


def load_hf(directory: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32)
    return model.eval()
