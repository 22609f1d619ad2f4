"""attnlab.models.memory: the KV-cache bytes counted on the meta device equal what a real prefill allocates."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.models import Decoder, DecoderConfig, MLAConfig, MoEConfig
from attnlab.models.memory import kv_cache_bytes, read_model_config

TINY = dict(vocab_size=50, d_model=32, num_heads=4, d_ff=48, context_length=40)
CONFIGS = {
    "full": DecoderConfig(n_layers=2, num_kv_heads=2, **TINY),
    "rolling": DecoderConfig(n_layers=3, num_kv_heads=1, head_dim=16, layer_windows=(6, None, 6), **TINY),
    "window past the context": DecoderConfig(n_layers=2, layer_windows=(30, 30), **TINY),
    "experts and sinks": DecoderConfig(  # gpt-oss-like: the meta count swaps the experts for a dense feed-forward
        n_layers=2,
        ffn="moe",
        moe=MoEConfig(num_experts=4, top_k=2, d_expert=16),
        sinks=True,
        layer_windows=(6, None),
        **TINY,
    ),
    "latent": DecoderConfig(
        n_layers=2, mla=MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6), **TINY
    ),
}


def real_cache(config: DecoderConfig, context: int, batch: int, dtype: torch.dtype):
    """The cache of a real model after a real prefill of 9 tokens per row (a window of 6 is crossed)."""
    torch.manual_seed(0)
    model = Decoder(config, "naive").to(dtype).eval()
    cache = model.new_cache(batch, context)
    with torch.no_grad():
        model(torch.randint(0, config.vocab_size, (batch, 9)), cache)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_counted_bytes_equal_a_real_prefill(name, dtype):
    config, context, batch = CONFIGS[name], 24, 3
    report = kv_cache_bytes(config, context, batch, dtype)
    cache = real_cache(config, context, batch, dtype)
    assert cache.nbytes > 0 and report.total_bytes == cache.nbytes
    for row in report.rows:  # each row equals the real layer caches of its kind, layer by layer summed
        real = [layer for layer in cache.layers if getattr(layer, "window", None) == row.window]
        assert len(real) == row.layers and sum(layer.nbytes for layer in real) == row.nbytes
    assert report.bytes_per_token == cache.nbytes / (batch * context)


def test_rows_say_what_is_allocated():
    config = CONFIGS["rolling"]  # 1 kv head of 16 features, layers 0 and 2 window 6, layer 1 full
    report = kv_cache_bytes(config, context=24, batch=2, dtype=torch.float16)
    full, sliding = sorted(report.rows, key=lambda row: row.kind)
    per_position = 2 * 1 * 16 * 2  # keys and values, h_kv heads, head_dim, 2 bytes
    assert (sliding.kind, sliding.window, sliding.layers, sliding.slots) == ("sliding", 6, 2, 7)  # window + spare
    assert sliding.nbytes == 2 * per_position * 2 * 7 and sliding.label == "sliding window 6"
    assert (full.layers, full.slots, full.nbytes) == (1, 24, per_position * 2 * 24)
    assert full.bytes_per_token == sliding.bytes_per_token // 2 == per_position
    # A window at least as long as the context needs no rolling cache: every layer keeps the whole context.
    (row,) = kv_cache_bytes(CONFIGS["window past the context"], context=24, batch=1).rows
    assert (row.kind, row.layers, row.slots) == ("full", 2, 24)


def test_a_latent_cache_holds_one_compressed_vector_per_position():
    report = kv_cache_bytes(CONFIGS["latent"], context=24, batch=2, dtype=torch.bfloat16)
    (row,) = report.rows  # DeepSeek's MLA: the latent (16) and the shared rotary key (4), no per-head keys/values
    assert (row.kind, row.label, row.layers, row.slots) == ("latent", "latent (MLA)", 2, 24)
    assert row.nbytes == 2 * 2 * 24 * (16 + 4) * 2 and row.bytes_per_token == 2 * (16 + 4) * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(context=41), "context 41 exceeds the model's context_length 40"),
        (dict(context=0), "context must be a positive integer, got 0"),
        (dict(batch=0), "batch must be a positive integer, got 0"),
        (dict(dtype=torch.int64), "dtype must be a floating-point torch.dtype"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kv_cache_bytes(CONFIGS["full"], **({"context": 8} | kwargs))


def test_config_from_a_directory_or_a_config_json(tmp_path):
    data = dict(
        model_type="mistral", vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, sliding_window=8,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_model_config(tmp_path) == read_model_config(tmp_path / "config.json")
    assert read_model_config(tmp_path).layer_windows == (8, 8)
    with pytest.raises(ValueError, match="absent does not exist"):
        read_model_config(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        read_model_config(tmp_path / "empty")
