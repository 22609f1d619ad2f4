"""Parameter counts on the meta device, against the published numbers."""

import pytest

from attnlab.gpt import GPTConfig, count_parameters
from attnlab.implementations import IMPLEMENTATIONS


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # Hugging Face's GPT2LMHeadModel("gpt2").num_parameters(): tied head, qkv biases.
        (GPTConfig.preset("gpt2"), 124_439_808),
        # The same with a separate output head: + 50257 * 768.
        (GPTConfig.preset("gpt2", tie_embeddings=False), 163_037_184),
        # The book's GPTModel (chapter 4): untied, no qkv biases.
        (GPTConfig.preset("gpt2", tie_embeddings=False, qkv_bias=False), 163_009_536),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_published_parameter_counts(config, expected):
    assert count_parameters(config) == expected


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_every_implementation_has_the_same_parameters(impl):
    config = GPTConfig.preset("gpt2", dropout=0.0)  # dropout 0: flex has none
    assert count_parameters(config, attn_impl=impl) == 124_439_808


def test_count_matches_transformers_for_the_tiny_model(tiny_hf):
    directory, hf_model = tiny_hf
    import json

    from attnlab.gpt.hf import config_from_hf

    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    assert count_parameters(config) == hf_model.num_parameters()


def test_model_bytes_counts_parameters_and_the_buffers_an_implementation_keeps():
    from attnlab.gpt.params import model_bytes

    config = GPTConfig(vocab_size=10, context_length=8, d_model=4, n_layers=3, n_heads=2)
    parameters = count_parameters(config) * 4  # float32
    assert model_bytes(config, "sdpa") == parameters  # no buffers
    # ch03 keeps the book's float32 (context, context) mask in each layer; einsum a boolean one.
    assert model_bytes(config, "ch03") == parameters + 3 * 8 * 8 * 4
    assert model_bytes(config, "einsum") == parameters + 3 * 8 * 8 * 1
