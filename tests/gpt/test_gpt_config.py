"""GPTConfig: GPT-2 small defaults, presets, validation with clear errors."""

import pytest

from attnlab.gpt import PRESETS, GPTConfig, GPTModel


def test_defaults_are_gpt2_small():
    config = GPTConfig()
    assert (config.vocab_size, config.context_length, config.d_model, config.n_layers, config.n_heads) == (
        50257,
        1024,
        768,
        12,
        12,
    )
    assert config.dropout == 0.1 and config.qkv_bias and config.tie_embeddings
    assert config.head_dim == 64


@pytest.mark.parametrize(
    ("name", "d_model", "n_layers", "n_heads"),
    [("gpt2", 768, 12, 12), ("gpt2-medium", 1024, 24, 16), ("gpt2-large", 1280, 36, 20), ("gpt2-xl", 1600, 48, 25)],
)
def test_presets_have_the_published_sizes(name, d_model, n_layers, n_heads):
    config = GPTConfig.preset(name)
    assert (config.d_model, config.n_layers, config.n_heads) == (d_model, n_layers, n_heads)


def test_preset_overrides_replace_fields():
    config = GPTConfig.preset("gpt2", context_length=256, dropout=0.0)
    assert config.context_length == 256 and config.dropout == 0.0 and config.d_model == 768


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown GPT preset 'gpt3'; valid names: gpt2, gpt2-medium"):
        GPTConfig.preset("gpt3")
    assert set(PRESETS) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_model": 100, "n_heads": 12}, "d_model 100 is not divisible by n_heads 12"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"vocab_size": 2.5}, "vocab_size must be a positive integer"),
        ({"dropout": 1.0}, r"dropout 1.0 must be in \[0, 1\)"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a positive number"),
        ({"qkv_bias": 1}, "qkv_bias must be True or False"),
    ],
)
def test_bad_config_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


def test_unknown_attn_impl_lists_the_valid_names():
    config = GPTConfig(vocab_size=10, context_length=8, d_model=8, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match=r"unknown attention implementation 'nope'; valid names: .*sdpa"):
        GPTModel(config, attn_impl="nope")


def test_dict_round_trip_and_unknown_keys():
    config = GPTConfig.preset("gpt2-medium", tie_embeddings=False)
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict(config.to_dict() | {"emb_dim": 3})
