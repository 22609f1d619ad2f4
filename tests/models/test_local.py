"""attnlab.models.local: which model runs a checkpoint directory, on which attention, checked from config.json."""

import json

import pytest
import torch

from attnlab.models import DecoderConfig
from attnlab.models.local import check_backend, choose_backend, needed_features, plan_local_run

CPU = torch.device("cpu")
LLAMA = dict(
    model_type="llama", vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
)  # fmt: skip
TINY = dict(vocab_size=50, d_model=32, n_layers=2, num_heads=4, d_ff=48, context_length=64)


def directory_with(directory, name, data):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(data))
    return directory


def test_routes(tmp_path):
    gpt2 = directory_with(tmp_path / "gpt2", "config.json", {})
    assert plan_local_run(gpt2, CPU).engine == "gpt"  # no model_type: an old GPT-2 config, as before
    assert plan_local_run(gpt2, CPU, impl="einsum").attention == "einsum"
    llama = directory_with(tmp_path / "llama", "config.json", LLAMA)
    plan = plan_local_run(llama, CPU)
    assert (plan.engine, plan.attention, plan.config.num_kv_heads) == ("decoder", "sdpa", 2)
    assert plan_local_run(llama, CPU, attn_impl="flash_torch").attention == "flash_torch"
    with pytest.raises(ValueError, match="not impl='einsum'"):
        plan_local_run(llama, CPU, impl="einsum")
    with pytest.raises(ValueError, match="are alternatives; give one"):
        plan_local_run(llama, CPU, impl="einsum", attn_impl="naive")


def test_an_attnlab_checkpoint_takes_no_backend(tmp_path):
    directory = directory_with(tmp_path, "attnlab_gpt.json", {"format": "attnlab-gpt/2"})
    assert plan_local_run(directory, CPU).engine == "gpt"
    with pytest.raises(ValueError, match="is an attnlab GPT checkpoint, which runs on an implementation"):
        plan_local_run(directory, CPU, attn_impl="naive")


def test_features_name_what_asks_for_them():
    config = DecoderConfig(**TINY, num_kv_heads=1, layer_windows=(16, None), attn_softcap=30.0, sinks=True)
    assert needed_features(config) == {
        "gqa": "1 key/value heads for 4 query heads",
        "window": "sliding window 16",
        "softcap": "attention logit softcap 30",
        "sinks": "attention sinks",
    }
    assert needed_features(DecoderConfig(**TINY)) == {}
    assert choose_backend(config, CPU) == "flash_torch"
    assert choose_backend(DecoderConfig(**TINY, layer_windows=(16, None)), CPU) == "sdpa_mask"
    with pytest.raises(ValueError, match=r"the sdpa backend does not support window, .*\(sliding window 16\)"):
        check_backend("sdpa", CPU, config)
