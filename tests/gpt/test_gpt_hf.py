"""Loading Hugging Face GPT-2 checkpoints: same logits and same greedy tokens as ``GPT2LMHeadModel``."""

import json

import pytest
import torch

from attnlab.gpt import GPTModel
from attnlab.gpt.hf import config_from_hf

# Every implementation that runs here without compilation (flex compiles for ~20 s on this CPU; it shares
# fused_qkv's projection code and the backends' own tests cover its core).
IMPLS = ["wrapper", "ch03", "fused_qkv", "einsum", "sdpa", "sdpa_mask", "torch_mha", "torch_mha_fast"]
# float32 end to end on both sides, same operations in a different order: differences are ~1e-6 on
# logits of size ~5. A wrong transpose, head split or GELU variant errs by 1e-2 or more.
LOGITS_TOL = 1e-4


@pytest.fixture(scope="module")
def hf_logits(tiny_hf, prompt_ids):
    _, hf_model = tiny_hf
    with torch.no_grad():
        return hf_model(prompt_ids).logits  # (b, t, vocab)


@pytest.mark.parametrize("impl", IMPLS)
def test_from_hf_logits_match_transformers(tiny_hf, prompt_ids, hf_logits, impl):
    directory, _ = tiny_hf
    model = GPTModel.from_hf(directory, attn_impl=impl)
    assert not model.training
    with torch.no_grad():
        logits = model(prompt_ids)
    assert logits.shape == hf_logits.shape
    torch.testing.assert_close(logits, hf_logits, atol=LOGITS_TOL, rtol=0)


@pytest.mark.parametrize(("impl", "use_cache"), [("sdpa", True), ("ch03", True), ("wrapper", False)])
def test_greedy_generation_matches_transformers(tiny_hf, prompt_ids, impl, use_cache):
    directory, hf_model = tiny_hf
    expected = hf_model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
    )
    model = GPTModel.from_hf(directory, attn_impl=impl)
    tokens = model.generate(prompt_ids, max_new_tokens=12, use_cache=use_cache)
    assert torch.equal(tokens, expected)


def test_pytorch_model_bin_with_original_key_names(tiny_hf, prompt_ids, hf_logits, tmp_path):
    """The OpenAI-converted checkpoints: keys without ``transformer.``, mask buffers included, .bin file."""
    directory, hf_model = tiny_hf
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # ignored: recomputed
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    model = GPTModel.from_hf(tmp_path, attn_impl="einsum")
    with torch.no_grad():
        torch.testing.assert_close(model(prompt_ids), hf_logits, atol=LOGITS_TOL, rtol=0)


def test_untied_checkpoint_uses_its_lm_head(prompt_ids, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    config = GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=1, n_head=2, tie_word_embeddings=False)
    hf_model = GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path)
    model = GPTModel.from_hf(tmp_path, attn_impl="sdpa")
    assert not model.config.tie_embeddings
    assert model.out_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(model(prompt_ids), hf_model(prompt_ids).logits, atol=LOGITS_TOL, rtol=0)


def test_checkpoint_with_extra_tensor_is_refused(tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    directory, _ = tiny_hf
    state = load_file(directory / "model.safetensors")
    state["transformer.h.9.attn.c_attn.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=r"does not use: \['h\.9\.attn\.c_attn\.weight'\]"):
        GPTModel.from_hf(tmp_path)


def test_missing_weights_file_is_a_clear_error(tiny_hf, tmp_path):
    directory, _ = tiny_hf
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=r"neither model\.safetensors nor pytorch_model\.bin"):
        GPTModel.from_hf(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"n_inner": 100}, "n_inner 100"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "llama"}, "model_type 'llama'"),
    ],
)
def test_unsupported_gpt2_variants_are_refused(tiny_hf, change, message):
    directory, _ = tiny_hf
    hf_config = json.loads((directory / "config.json").read_text()) | change
    with pytest.raises(ValueError, match=message):
        config_from_hf(hf_config)


def test_config_from_hf_reads_the_architecture(tiny_hf):
    directory, _ = tiny_hf
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    assert (config.vocab_size, config.context_length, config.d_model, config.n_layers, config.n_heads) == (
        96,
        64,
        48,
        2,
        4,
    )
    assert config.qkv_bias and config.tie_embeddings and config.layer_norm_eps == 1e-5
