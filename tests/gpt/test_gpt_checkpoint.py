"""attnlab's own checkpoints: safetensors round trip across implementations, and load_model's dispatch."""

import json

import pytest
import torch
from safetensors.torch import load_file

from attnlab.gpt import GPTConfig, GPTModel, load_model
from attnlab.gpt.checkpoint import CONFIG_FILE, WEIGHTS_FILE

CONFIG = GPTConfig(vocab_size=30, context_length=12, d_model=24, n_layers=2, n_heads=3, dropout=0.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = GPTModel(CONFIG, attn_impl="wrapper").eval()
    directory = tmp_path_factory.mktemp("ckpt")
    model.save(directory)
    return directory, model


@pytest.mark.parametrize("impl", ["ch03", "torch_mha_fast", "einsum"])
def test_saved_with_one_implementation_loads_into_another(saved, impl):
    directory, original = saved
    loaded = GPTModel.load(directory, attn_impl=impl)
    assert loaded.config == CONFIG and not loaded.training
    idx = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        # Different implementations, same function: float32 rounding only (~1e-6 on logits ~ 5).
        torch.testing.assert_close(loaded(idx), original(idx), atol=1e-4, rtol=0)


def test_tied_head_is_stored_once_and_attention_in_the_common_layout(saved):
    directory, _ = saved
    tensors = load_file(directory / WEIGHTS_FILE)
    assert "tok_emb.weight" in tensors and "out_head.weight" not in tensors
    assert tensors["blocks.1.attn.W_query"].shape == (24, 24)
    assert not any(".heads." in key for key in tensors)  # the wrapper's own layout does not leak


def test_untied_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=30, context_length=12, d_model=24, n_layers=1, n_heads=3, tie_embeddings=False)
    model = GPTModel(config, attn_impl="sdpa")
    model.save(tmp_path)
    loaded = GPTModel.load(tmp_path, attn_impl="sdpa")
    for (name, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_checkpoint_for_another_config_is_refused(saved, tmp_path):
    directory, _ = saved
    payload = json.loads((directory / CONFIG_FILE).read_text())
    payload["config"]["n_layers"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    (tmp_path / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"weights do not fit this model .*missing: \['blocks\.2"):
        GPTModel.load(tmp_path)


def test_load_model_dispatches_on_the_directory(saved, tiny_hf, tmp_path):
    directory, _ = saved
    assert load_model(directory).config == CONFIG
    hf_directory, hf_model = tiny_hf
    assert load_model(hf_directory).config.vocab_size == hf_model.config.vocab_size
    with pytest.raises(ValueError, match=r"has neither attnlab_gpt\.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_dropout_override_lets_flex_load_an_inference_copy(saved):
    directory, _ = saved
    with pytest.raises(ValueError, match="does not support dropout"):
        GPTModel.load(directory, attn_impl="flex", dropout=0.1)
    assert GPTModel.load(directory, attn_impl="flex", dropout=0.0).config.dropout == 0.0
