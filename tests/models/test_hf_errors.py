"""Bad checkpoints fail with one clear error naming the problem, before any weight is used."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from tiny_hf import save_tiny  # noqa: E402

from attnlab.models import from_hf  # noqa: E402


@pytest.fixture
def llama_dir(tmp_path):
    return save_tiny("llama", tmp_path / "llama")


def _edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_tensors(directory, edit):
    path = directory / "model.safetensors"
    tensors = safetensors_torch.load_file(path)
    edit(tensors)
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})


def test_unknown_model_type(llama_dir):
    _edit_config(llama_dir, model_type="falcon")
    with pytest.raises(ValueError, match=r"model_type 'falcon' is not supported; attnlab runs: .*llama"):
        from_hf(llama_dir)


def test_field_that_cannot_be_honoured_is_named(llama_dir):
    _edit_config(llama_dir, logit_scale=3.0)
    with pytest.raises(ValueError, match=r"does not know how to honour the field\(s\) logit_scale"):
        from_hf(llama_dir)


def test_unsupported_rope_type_is_named(llama_dir):
    _edit_config(llama_dir, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0})
    with pytest.raises(ValueError, match=r"rope_type 'longrope' is not supported"):
        from_hf(llama_dir)


def test_unsupported_activation_is_named(llama_dir):
    _edit_config(llama_dir, hidden_act="relu")
    with pytest.raises(ValueError, match=r"hidden_act='relu' is not supported"):
        from_hf(llama_dir)


def test_missing_tensor(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*blocks.1.ffn.up_proj.weight"):
        from_hf(llama_dir)


def test_extra_tensor(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.update({"model.layers.7.mlp.up_proj.weight": torch.zeros(48, 32)}))
    with pytest.raises(ValueError, match=r"'model.layers.7.mlp.up_proj.weight' has no place"):
        from_hf(llama_dir)


def test_config_contradicting_tensors(llama_dir):
    _edit_config(llama_dir, num_key_value_heads=4)  # the checkpoint's k_proj has 2 heads
    with pytest.raises(ValueError, match=r"k_proj.weight' has shape \(16, 32\), but config.json implies \(32, 32\)"):
        from_hf(llama_dir)


def test_integer_tensor_refused(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.update({"model.norm.weight": torch.ones(32, dtype=torch.int32)}))
    with pytest.raises(ValueError, match=r"'model.norm.weight' is I32; weights must be floating point"):
        from_hf(llama_dir)


def test_bad_config_value_type(llama_dir):
    _edit_config(llama_dir, num_attention_heads="four")
    with pytest.raises(ValueError, match=r"num_attention_heads must be an integer >= 1, got 'four'"):
        from_hf(llama_dir)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"has no config.json"):
        from_hf(tmp_path)


def test_backend_that_cannot_do_the_window_is_refused_by_name(tmp_path):
    directory = save_tiny("mistral", tmp_path / "mistral")
    with pytest.raises(ValueError, match=r"the sdpa backend does not support window"):
        from_hf(directory, "sdpa")


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    directory = save_tiny("llama", tmp_path / "one")
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    idx = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(from_hf(tmp_path / "sharded", "naive")(idx), from_hf(directory, "naive")(idx))
