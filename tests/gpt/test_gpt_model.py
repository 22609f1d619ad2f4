"""GPTModel: shapes, position handling, tied head, errors; cache and no cache give the same logits."""

from dataclasses import replace

import pytest
import torch
from logits_check import assert_close_scaled

from attnlab.gpt import GPTConfig, GPTModel, kv_cache_implementations
from attnlab.gpt.state import export_state, load_state
from attnlab.registry import available_implementations

CONFIG = GPTConfig(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, dropout=0.0)
# Those that run on this CPU; flex compiles per shape (seconds each on the CPU) and shares fused_qkv's
# cached path, so it is left out here.
CACHED_IMPLS = [n for n in kv_cache_implementations() if n in available_implementations("cpu") and n != "flex"]
# Same float32 computation split into prefill + steps instead of one pass: rounding differs by ~1e-6
# on logits of size ~10 (1e-7 of their magnitude); a wrong position offset or mask alignment errs by 1e-1
# or more. Relative to the logits' magnitude: 1e-5 of it, 100x the rounding seen here.
CACHE_TOL = 1e-5


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return export_state(GPTModel(CONFIG, attn_impl="fused_qkv"))


def model_on(impl, state):
    model = GPTModel(CONFIG, attn_impl=impl)
    load_state(model, state)
    return model.eval()


def test_logits_shape_and_tied_head(state):
    model = model_on("sdpa", state)
    idx = torch.randint(0, 50, (3, 7))
    assert model(idx).shape == (3, 7, 50)
    assert model.out_head.weight is model.tok_emb.weight


def test_kv_cache_implementations_are_the_ones_with_attend_cached():
    names = set(kv_cache_implementations())
    assert {"ch03", "einsum", "fused_qkv", "sdpa", "sdpa_mask", "flex"} <= names
    assert not names & {"wrapper", "torch_mha", "torch_mha_fast"}


@pytest.mark.parametrize("impl", CACHED_IMPLS)
def test_cached_steps_give_the_full_pass_logits(state, impl):
    """Prefill 5 tokens, then 1, 1 and 4 at a time: each chunk's logits equal the full pass's rows."""
    model = model_on(impl, state)
    idx = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(3))  # (b, t)
    with torch.no_grad():
        full = model(idx)  # (b, t, vocab)
        cache = model.new_kv_cache()
        chunks = [model(idx[:, start:end], cache) for start, end in ((0, 5), (5, 6), (6, 7), (7, 11))]
    assert cache.length == 11
    assert_close_scaled(torch.cat(chunks, dim=1), full, CACHE_TOL)


def test_sequence_past_context_is_a_clear_error(state):
    model = model_on("sdpa", state)
    with pytest.raises(ValueError, match="sequence length 17 exceeds context_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="sequence length 17 exceeds context_length 16"):
            model(torch.zeros(1, 7, dtype=torch.long), cache)


@pytest.mark.parametrize(
    "idx", [torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)]
)
def test_bad_token_ids_are_a_clear_error(state, idx):
    with pytest.raises(ValueError, match=r"idx must be 2-D integer|at least one token"):
        model_on("sdpa", state)(idx)


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_token_ids_outside_the_vocabulary_are_a_clear_error(state, bad):
    model = model_on("sdpa", state)
    with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary \[0, "):
        model(torch.tensor([[0, bad]]))


def test_cache_for_another_model_is_refused(state):
    model = model_on("sdpa", state)
    from attnlab.gpt import KVCache

    with pytest.raises(ValueError, match="KV cache has 3 layers; this model has 2"):
        model(torch.zeros(1, 2, dtype=torch.long), KVCache(3, 16))


def test_dropout_is_active_in_training_mode_only():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=20, context_length=8, d_model=16, n_layers=1, n_heads=2, dropout=0.5))
    idx = torch.randint(0, 20, (2, 8))
    assert not torch.equal(model(idx), model(idx))  # two dropout masks
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_implementation_without_dropout_builds_for_inference_and_refuses_training():
    config = GPTConfig(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, dropout=0.1)
    model = GPTModel(config, attn_impl="flash_torch").eval()  # eval mode: dropout does nothing anyway
    idx = torch.randint(0, 50, (2, 5))
    assert model(idx).shape == (2, 5, 50)
    model.train()
    with pytest.raises(
        ValueError, match=r"'flash_torch' has no dropout, but the model is in training mode with dropout 0\.1"
    ):
        model(idx)
    # With dropout 0 it trains: nothing is skipped.
    GPTModel(replace(config, dropout=0.0), attn_impl="flash_torch").train()(idx).sum().backward()
    # An implementation with dropout trains with it.
    GPTModel(config, attn_impl="sdpa").train()(idx).sum().backward()
