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
}
MODEL_TYPE = {"llama3_scaled": "llama"}


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
            if "norm" in param_name or "ln_" in param_name or param_name.endswith("bias"):
                param.normal_(0.0, 0.3)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    return directory


def load_hf(directory: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32)
    return model.eval()
