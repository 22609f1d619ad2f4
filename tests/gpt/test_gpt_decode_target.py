"""GPTDecodeTarget: what the decode bench drives; its KV bytes equal the cache's actual tensors."""

import pytest
import torch

from attnlab.gpt import GPTConfig, GPTModel
from attnlab.gpt.decode_target import GPTDecodeTarget

TINY = GPTConfig(vocab_size=96, context_length=64, d_model=32, n_layers=2, n_heads=4, dropout=0.0)


def _model(attn_impl="sdpa"):
    torch.manual_seed(0)
    return GPTModel(TINY, attn_impl=attn_impl).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_bytes_match_the_cache_tensors(dtype):
    model = _model().to(dtype)
    prompt = torch.randint(0, TINY.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))  # (b, t)
    target = GPTDecodeTarget(model, max_tokens=7)  # the cache holds exactly the prompt: nbytes = its bytes
    target.prefill(prompt)
    held = sum(layer.nbytes for layer in target.cache.layers)
    assert held > 0
    assert target.kv_bytes(batch=3, length=7) == held


def test_step_and_rewind_give_the_same_tokens_as_generate():
    model = _model()
    prompt = torch.randint(0, TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))  # (b, t)
    expected = model.generate(prompt, 3)[:, 5:]  # (b, 3)
    target = GPTDecodeTarget(model, max_tokens=8)
    token = target.prefill(prompt).argmax(dim=-1, keepdim=True)  # (b, 1)
    for attempt in range(2):  # the second pass after a rewind decodes the same tokens
        target.rewind(5)
        step_token, tokens = token, [token]
        for _ in range(2):
            step_token = target.step(step_token).argmax(dim=-1, keepdim=True)  # (b, 1)
            tokens.append(step_token)
        assert torch.equal(torch.cat(tokens, dim=1), expected), attempt


def test_an_implementation_without_cache_is_refused():
    with pytest.raises(ValueError, match="'wrapper' has no KV-cache path"):
        GPTDecodeTarget(_model("wrapper"), max_tokens=8)


def test_step_before_prefill_is_refused():
    with pytest.raises(ValueError, match=r"call prefill\(prompt\) first"):
        GPTDecodeTarget(_model(), max_tokens=8).step(torch.zeros(1, 1, dtype=torch.long))
