"""DecoderConfig and its parts refuse inconsistent values by name, and round-trip through dicts."""

from __future__ import annotations

import pytest

from attnlab.models import DecoderConfig, MoEConfig, RopeConfig

BASE = dict(vocab_size=50, d_model=32, n_layers=2, num_heads=4, d_ff=64, context_length=64)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_kv_heads": 3}, "num_kv_heads 3 must divide num_heads 4"),
        ({"d_model": 30}, "d_model 30 is not divisible by num_heads 4"),
        ({"layer_windows": (4,)}, "layer_windows has 1 entries; the model has n_layers=2"),
        ({"layer_windows": (0, None)}, "layer_windows entries must be None or positive integers, got 0"),
        ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, rmsnorm_plus_one; got 'batchnorm'"),
        ({"vocab_size": True}, "vocab_size must be a positive integer, got True"),
        ({"attn_softcap": -1.0}, "attn_softcap must be a finite number > 0 or None, got -1.0"),
        ({"ffn": "moe"}, "ffn 'moe' and a MoEConfig in moe go together"),
        ({"head_dim": 7}, "rotary embedding needs an even head_dim, got 7"),
    ],
)
def test_bad_decoder_config(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DecoderConfig(**{**BASE, **changes})


def test_rope_llama3_needs_its_factors():
    with pytest.raises(ValueError, match="needs original_context_length"):
        RopeConfig(rope_type="llama3")
    with pytest.raises(ValueError, match="needs low_freq_factor and high_freq_factor"):
        RopeConfig(rope_type="llama3", original_context_length=16)


def test_moe_top_k_beyond_experts():
    with pytest.raises(ValueError, match="moe top_k 5 exceeds num_experts 4"):
        MoEConfig(num_experts=4, top_k=5, d_expert=8)


def test_round_trip_through_dict():
    config = DecoderConfig(
        **BASE,
        num_kv_heads=2,
        layer_windows=(8, None),
        rope=RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_context_length=16),
    )  # fmt: skip
    assert DecoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown decoder config fields: colour"):
        DecoderConfig.from_dict({**config.to_dict(), "colour": "blue"})
