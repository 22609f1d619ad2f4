"""Loading Hugging Face GPT-2 checkpoints: same logits and same greedy tokens as ``GPT2LMHeadModel``."""

import json
import re

import pytest
import torch
from logits_check import assert_close_scaled

from attnlab.gpt import GPTModel
from attnlab.gpt.hf import config_from_hf

# Every implementation that runs here without compilation (flex compiles for ~20 s on this CPU; it shares
# fused_qkv's projection code and the backends' own tests cover its core).
IMPLS = ["wrapper", "ch03", "fused_qkv", "einsum", "sdpa", "sdpa_mask", "torch_mha", "torch_mha_fast"]
# float32 end to end on both sides, same operations in a different order: differences are ~1e-6 on
# logits of size ~5 (2e-7 of their magnitude). A wrong transpose, head split or GELU variant errs by 1e-2
# or more. The limit is relative to the logits' magnitude: 2e-5 of it, 100x the rounding seen here.
LOGITS_TOL = 2e-5


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
    assert_close_scaled(logits, hf_logits, LOGITS_TOL)


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
        assert_close_scaled(model(prompt_ids), hf_logits, LOGITS_TOL)


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
        assert_close_scaled(model(prompt_ids), hf_model(prompt_ids).logits, LOGITS_TOL)


def test_checkpoint_with_extra_tensor_is_refused(tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    directory, _ = tiny_hf
    state = load_file(directory / "model.safetensors")
    state["transformer.h.1.attn.extra.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=r"1 unexpected\); missing: \[\], unexpected: \['h\.1\.attn\.extra\.weight'\]"):
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


# -- a damaged or hostile checkpoint directory: refused with a ValueError naming what is wrong ---------------


def edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(
    ("field", "value", "tensor"),
    [
        ("n_layer", 10**9, "the tensors hold 2 layers"),
        ("vocab_size", 10**12, "wte.weight has shape (96, 48)"),
        ("n_embd", 4 * 2**36, "wte.weight has shape (96, 48)"),
        ("n_positions", 10**12, "wpe.weight has shape (64, 48)"),
    ],
)
def test_huge_config_sizes_are_refused_before_building(hf_copy, few_blocks, field, value, tensor):
    edit_config(hf_copy, **{field: value})
    with pytest.raises(ValueError, match=rf"config\.json has {field}={value}, but {re.escape(tensor)}"):
        GPTModel.from_hf(hf_copy)
    assert not few_blocks  # refused from the file's header, before a single block was built


def test_consistent_but_too_large_model_is_refused_by_its_memory_estimate(tmp_path, few_blocks):
    """Tensors that match the config, but the causal-mask buffers of ch03 would be context_length**2 floats
    per layer: 4 TB for a 2 MB file. The estimate (built on the meta device) refuses it; sdpa has no such
    buffers and loads it."""
    from safetensors.torch import save_file

    n_positions = 10**6
    d = 1
    shapes = {"wte.weight": (2, d), "wpe.weight": (n_positions, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    shapes |= {f"h.0.{name}": (d,) for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")}
    shapes |= {"h.0.attn.c_attn.weight": (d, 3 * d), "h.0.attn.c_attn.bias": (3 * d,)}
    shapes |= {"h.0.attn.c_proj.weight": (d, d), "h.0.attn.c_proj.bias": (d,)}
    shapes |= {"h.0.mlp.c_fc.weight": (d, 4 * d), "h.0.mlp.c_fc.bias": (4 * d,)}
    shapes |= {"h.0.mlp.c_proj.weight": (4 * d, d), "h.0.mlp.c_proj.bias": (d,)}
    save_file(
        {name: torch.zeros(shape, dtype=torch.float16) for name, shape in shapes.items()},
        tmp_path / "model.safetensors",
    )
    config = {"vocab_size": 2, "n_positions": n_positions, "n_embd": d, "n_layer": 1, "n_head": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"on 'ch03' would need 3,7\d\d\.\d GiB, more than the .* \(this machine's memory\)"
    ):
        GPTModel.from_hf(tmp_path, attn_impl="ch03")
    with pytest.raises(ValueError, match=r"more than the 0\.0 GiB allowed \(max_bytes\)"):
        GPTModel.from_hf(tmp_path, attn_impl="sdpa", max_bytes=1000)
    assert GPTModel.from_hf(tmp_path, attn_impl="sdpa").config.context_length == n_positions


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_non_floating_tensors_are_refused_not_cast(hf_copy, dtype):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_copy / "model.safetensors")
    state["transformer.h.1.ln_2.bias"] = torch.ones(48, dtype=dtype)
    save_file(state, hf_copy / "model.safetensors")
    name = {torch.int64: "I64", torch.int8: "I8", torch.bool: "BOOL", torch.complex64: "C64"}[dtype]
    with pytest.raises(
        ValueError, match=rf"tensor 'h\.1\.ln_2\.bias' has dtype {name}; weights must be floating-point"
    ):
        GPTModel.from_hf(hf_copy)


def test_non_floating_tensor_in_pytorch_model_bin_is_refused(tiny_hf, tmp_path):
    directory, hf_model = tiny_hf
    state = dict(hf_model.state_dict())
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"].to(torch.int32)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=r"tensor 'wpe\.weight' has dtype int32; weights must be floating-point"):
        GPTModel.from_hf(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", r"holds a JSON list, expected an object"),
        ('{"n_layer": "2"}', r"n_layer must be a positive integer, got '2' \(str\)"),
        ('{"n_layer": true}', r"n_layer must be a positive integer, got True \(bool\)"),
        ('{"n_embd": 48.0}', r"n_embd must be a positive integer, got 48\.0 \(float\)"),
        ('{"n_head": -4}', r"n_head must be a positive integer, got -4"),
        ('{"layer_norm_epsilon": "1e-5"}', r"layer_norm_epsilon must be a number, got '1e-5'"),
        ('{"resid_pdrop": null}', r"resid_pdrop must be a number, got None"),
        ('{"tie_word_embeddings": "true"}', r"tie_word_embeddings must be a boolean, got 'true'"),
        ('{"n_inner": "x"}', r"n_inner must be a positive integer, got 'x'"),
        ('{"activation_function": ["gelu_new"]}', r"activation_function must be a string"),
        ('{"n_layer": 2', r"is not valid JSON"),
        ("", r"is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, r"nests too deeply"),
    ],
)
def test_bad_config_json_is_a_clear_error(hf_copy, content, message):
    (hf_copy / "config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error_info:
        GPTModel.from_hf(hf_copy)
    assert str(hf_copy / "config.json") in str(error_info.value)  # the message names the file


def test_non_utf8_config_json_is_a_clear_error(hf_copy):
    (hf_copy / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        GPTModel.from_hf(hf_copy)


@pytest.mark.parametrize("cut", ["empty", "header", "data"])
def test_truncated_safetensors_is_a_clear_error(hf_copy, cut):
    path = hf_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "header": data[:20], "data": data[:-10]}[cut])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        GPTModel.from_hf(hf_copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: torch.zeros(3), r"holds a Tensor, expected a dict of tensor names to tensors"),
        (lambda: {"wte.weight": [1.0, 2.0]}, r"maps 'wte\.weight' to a list"),
        (lambda: {3: torch.zeros(2)}, r"maps 3 to a Tensor"),
        (lambda: {"wte.weight": torch.zeros(1).expand(96, 48)}, r"has more elements than storage"),
    ],
)
def test_pytorch_model_bin_that_is_not_a_state_dict_is_refused(tiny_hf, tmp_path, content, message):
    directory, _ = tiny_hf
    torch.save(content(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        GPTModel.from_hf(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a torch.save zip archive"),
        (b"\x80\x02garbage", "is not a torch.save zip archive"),
        (None, "legacy pre-1.6 format"),
    ],
)
def test_damaged_or_legacy_pytorch_model_bin_is_refused(tiny_hf, tmp_path, content, message):
    directory, _ = tiny_hf
    path = tmp_path / "pytorch_model.bin"
    if content is None:
        torch.save({"wte.weight": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(content)
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        GPTModel.from_hf(tmp_path)


def test_truncated_zip_pytorch_model_bin_is_refused(tiny_hf, tmp_path):
    directory, hf_model = tiny_hf
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf_model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:-200])  # the zip's central directory is lost
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is not a"):
        GPTModel.from_hf(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"),
            r"1 missing, 0 unexpected\); missing: \['h\.1\.mlp\.c_fc\.bias'\]",
        ),
        (
            lambda s: s.__setitem__("transformer.h.0.attn.c_attn.weight", torch.zeros(144, 48)),
            r"tensor 'h\.0\.attn\.c_attn\.weight' has shape \(144, 48\), this config needs \(48, 144\)",
        ),
        (
            lambda s: s.__setitem__("transformer.ln_f.bias", torch.zeros(())),
            r"'ln_f\.bias' has shape \(\), this config needs \(48,\)",
        ),
        (
            lambda s: s.__setitem__("wte.weight", torch.zeros(96, 48)),
            r"holds both 'transformer\.wte\.weight' and 'wte\.weight'",
        ),
        (
            lambda s: s.__setitem__("transformer.h.0.ln_1.weight", torch.full((48,), float("nan"))),
            r"'h\.0\.ln_1\.weight' holds NaN",
        ),
    ],
)
def test_missing_extra_or_misshapen_tensors_are_refused(hf_copy, edit, message):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_copy / "model.safetensors")
    edit(state)
    save_file(state, hf_copy / "model.safetensors")
    with pytest.raises(ValueError, match=message):
        GPTModel.from_hf(hf_copy)


def test_untied_config_needs_lm_head(hf_copy):
    edit_config(hf_copy, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"missing: \['lm_head\.weight'\]"):
        GPTModel.from_hf(hf_copy)


def test_missing_or_unreadable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        GPTModel.from_hf(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        GPTModel.from_hf(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be used: File name too long"):
        GPTModel.from_hf(tmp_path / ("x" * 5000))


# -- implementations without dropout load real GPT-2 configs (attn_pdrop, resid_pdrop 0.1) for inference ----


@pytest.mark.parametrize("impl", ["flash_torch", "flex"])
def test_implementation_without_dropout_loads_a_checkpoint_with_dropout(tiny_hf, hf_logits, prompt_ids, impl):
    directory, _ = tiny_hf
    assert json.loads((directory / "config.json").read_text())["resid_pdrop"] == 0.1
    model = GPTModel.from_hf(directory, attn_impl=impl)
    assert not model.training and model.config.dropout == 0.1
    if impl == "flash_torch":  # flex compiles (~20 s on this CPU): building it is what this test is about
        with torch.no_grad():
            assert_close_scaled(model(prompt_ids), hf_logits, LOGITS_TOL)
    model.train()
    with pytest.raises(
        ValueError, match=rf"'{impl}' has no dropout, but the model is in training mode with dropout 0\.1"
    ):
        model(prompt_ids)
