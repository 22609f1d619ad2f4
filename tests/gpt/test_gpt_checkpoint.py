"""attnlab's own checkpoints: safetensors round trip across implementations, and load_model's dispatch."""

import json
from pathlib import Path

import pytest
import torch
from logits_check import assert_close_scaled
from safetensors import safe_open
from safetensors.torch import load_file, save_file

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
        assert_close_scaled(loaded(idx), original(idx), 1e-6)  # the same weights: float32 rounding at most


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
    with pytest.raises(ValueError, match=r"saved with different configs \(n_layers 3 vs 2; JSON vs weights\)"):
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


def test_dropout_override_replaces_the_saved_dropout(saved):
    directory, _ = saved
    assert GPTModel.load(directory, attn_impl="flex", dropout=0.1).config.dropout == 0.1  # eval mode: fine
    assert GPTModel.load(directory, attn_impl="flex", dropout=0.0).config.dropout == 0.0


# -- a save is atomic as a whole, and load checks that the two files belong together -----------------------


def logits_of(model):
    idx = torch.arange(12).reshape(1, 12) % 30  # (1, 12)
    with torch.no_grad():
        return model(idx)


def fail_on_config_write(monkeypatch):
    """Make writing attnlab_gpt.json fail, as a full disk would, after the weights were written."""
    original = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == CONFIG_FILE:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_failed_save_leaves_the_old_checkpoint_intact(saved, tmp_path, monkeypatch):
    _, old_model = saved
    target = tmp_path / "ckpt"
    old_model.save(target)
    torch.manual_seed(5)
    new_model = GPTModel(CONFIG, attn_impl="sdpa").eval()  # same config, other weights
    with monkeypatch.context() as patch:
        fail_on_config_write(patch)
        with pytest.raises(OSError, match="No space left"):
            new_model.save(target)
    # Either the old checkpoint, intact, or nothing: never the new weights beside the old config.
    assert_close_scaled(logits_of(GPTModel.load(target)), logits_of(old_model), 1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging directory left behind


def test_failed_first_save_leaves_no_checkpoint(saved, tmp_path, monkeypatch):
    _, model = saved
    fail_on_config_write(monkeypatch)
    with pytest.raises(OSError):
        model.save(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_an_earlier_checkpoint_and_refuses_other_directories(saved, tmp_path):
    _, old_model = saved
    target = tmp_path / "ckpt"
    old_model.save(target)
    torch.manual_seed(6)
    new_model = GPTModel(CONFIG, attn_impl="sdpa").eval()
    new_model.save(target)
    assert_close_scaled(logits_of(GPTModel.load(target)), logits_of(new_model), 1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds other files \(notes\.txt\), which a save .* would delete"):
        new_model.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        new_model.save(tmp_path / "a_file")


def test_config_and_weights_from_different_saves_are_refused(saved, tmp_path):
    _, model = saved
    model.save(tmp_path / "a")
    model.save(tmp_path / "b")  # same config and weights, another save
    (tmp_path / "a" / CONFIG_FILE).write_bytes((tmp_path / "b" / CONFIG_FILE).read_bytes())
    with pytest.raises(ValueError, match="come from different saves"):
        GPTModel.load(tmp_path / "a")


def test_hand_made_pair_with_another_config_is_refused(saved, tmp_path):
    directory, _ = saved
    payload = json.loads((directory / CONFIG_FILE).read_text())
    payload["config"]["layer_norm_eps"] = 1e-3  # no tensor shape could tell this apart
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    (tmp_path / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"different configs \(layer_norm_eps 0\.001 vs 1e-05; JSON vs weights\)"):
        GPTModel.load(tmp_path)


def test_weights_without_the_pair_metadata_are_refused(saved, tmp_path):
    directory, _ = saved
    (tmp_path / CONFIG_FILE).write_bytes((directory / CONFIG_FILE).read_bytes())
    save_file(load_file(directory / WEIGHTS_FILE), tmp_path / WEIGHTS_FILE)  # no metadata at all
    with pytest.raises(ValueError, match=r"has format None, its attnlab_gpt\.json 'attnlab-gpt/2'"):
        GPTModel.load(tmp_path)


def test_format_1_checkpoints_still_load(saved, tmp_path):
    directory, model = saved
    payload = json.loads((directory / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "attnlab-gpt/1", "config": payload["config"]}))
    save_file(load_file(directory / WEIGHTS_FILE), tmp_path / WEIGHTS_FILE, metadata={"format": "attnlab-gpt/1"})
    assert_close_scaled(logits_of(GPTModel.load(tmp_path)), logits_of(model), 1e-6)


# -- a damaged or hostile attnlab checkpoint: a ValueError naming what is wrong --------------------------------


def rewrite(directory, target, config_changes=(), tensors=None):
    """A copy of checkpoint ``directory`` in ``target`` with config fields changed in both files alike
    (so the pair check passes and the later checks are reached) and, optionally, other tensors."""
    payload = json.loads((directory / CONFIG_FILE).read_text())
    payload["config"] |= dict(config_changes)
    target.mkdir(exist_ok=True)
    (target / CONFIG_FILE).write_text(json.dumps(payload))
    with safe_open(directory / WEIGHTS_FILE, framework="pt") as handle:
        metadata = handle.metadata()
    metadata["config"] = json.dumps(payload["config"], sort_keys=True)
    save_file(load_file(directory / WEIGHTS_FILE) if tensors is None else tensors, target / WEIGHTS_FILE, metadata)
    return target


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_layers", 10**9, "has n_layers=1000000000, but the tensors hold 2 layers"),
        ("vocab_size", 10**12, r"has vocab_size=1000000000000, but tok_emb\.weight has shape \(30, 24\)"),
        ("d_model", 3 * 2**40, r"has d_model=3298534883328, but tok_emb\.weight has shape \(30, 24\)"),
        ("context_length", 10**12, r"has context_length=1000000000000, but pos_emb\.weight has shape \(12, 24\)"),
    ],
)
def test_huge_sizes_in_an_attnlab_config_are_refused_before_building(
    saved, tmp_path, few_blocks, field, value, message
):
    directory, _ = saved
    with pytest.raises(ValueError, match=message):
        GPTModel.load(rewrite(directory, tmp_path, {field: value}))
    assert not few_blocks


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "holds a JSON list, expected an object"),
        ({"format": "attnlab-gpt/2"}, "has no 'config' object"),
        ({"format": "attnlab-gpt/2", "config": [1]}, r"has no 'config' object \(found list\)"),
        ({"format": "other"}, "has format 'other', expected 'attnlab-gpt/2'"),
        ({"format": "attnlab-gpt/2", "config": {"vocab_size": 30}}, "the config lacks field"),
        (
            {"format": "attnlab-gpt/2", "config": CONFIG.to_dict() | {"n_heads": "3"}},
            "n_heads must be a positive integer",
        ),
        (
            {"format": "attnlab-gpt/2", "config": CONFIG.to_dict() | {"dropout": "0"}},
            r"dropout must be a number, got '0'",
        ),
        (
            {"format": "attnlab-gpt/2", "config": CONFIG.to_dict() | {"extra": 1}},
            r"unknown GPTConfig field\(s\): 'extra'",
        ),
    ],
)
def test_bad_attnlab_config_json_is_a_clear_error(saved, tmp_path, payload, message):
    directory, _ = saved
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    (tmp_path / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match=message):
        GPTModel.load(tmp_path)


def test_damaged_attnlab_weights_are_a_clear_error(saved, tmp_path):
    directory, _ = saved
    (tmp_path / CONFIG_FILE).write_bytes((directory / CONFIG_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"has attnlab_gpt\.json but no attnlab_gpt\.safetensors"):
        GPTModel.load(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes()[:-7])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        GPTModel.load(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("final_norm.bias"), r"1 missing, 0 unexpected\); missing: \['final_norm\.bias'\]"),
        (lambda s: s.__setitem__("blocks.0.attn.extra", torch.zeros(1)), r"unexpected: \['blocks\.0\.attn\.extra'\]"),
        (
            lambda s: s.__setitem__("blocks.1.attn.W_key", torch.zeros(24, 25)),
            r"'blocks\.1\.attn\.W_key' has shape \(24, 25\)",
        ),
        (
            lambda s: s.__setitem__("blocks.1.attn.b_out", torch.ones(24, dtype=torch.int64)),
            r"'blocks\.1\.attn\.b_out' has dtype I64",
        ),
        (
            lambda s: s.__setitem__("pos_emb.weight", torch.full((12, 24), float("inf"))),
            r"'pos_emb\.weight' holds NaN or inf",
        ),
    ],
)
def test_missing_extra_misshapen_or_integer_tensors_are_refused(saved, tmp_path, edit, message):
    directory, _ = saved
    tensors = load_file(directory / WEIGHTS_FILE)
    edit(tensors)
    with pytest.raises(ValueError, match=message):
        GPTModel.load(rewrite(directory, tmp_path, tensors=tensors))


def test_load_state_refuses_integer_tensors():
    from attnlab.gpt.state import export_state, load_state

    model = GPTModel(CONFIG, attn_impl="sdpa")
    state = export_state(model)
    state["tok_emb.weight"] = state["tok_emb.weight"].round().to(torch.int64)
    with pytest.raises(ValueError, match=r"tensor 'tok_emb\.weight' has dtype int64; weights must be floating-point"):
        load_state(model, state)


def test_state_shapes_are_those_export_state_writes():
    from attnlab.gpt.state import export_state, state_shapes

    for config in (
        CONFIG,
        GPTConfig(
            vocab_size=7, context_length=5, d_model=8, n_layers=3, n_heads=2, qkv_bias=False, tie_embeddings=False
        ),
    ):
        exported = {name: tuple(t.shape) for name, t in export_state(GPTModel(config, attn_impl="einsum")).items()}
        assert state_shapes(config) == exported


def test_a_path_with_a_nul_character_is_a_clear_error():
    with pytest.raises(ValueError, match=r"weights directory 'a\\x00b' is not a valid path"):
        load_model("a\x00b")
