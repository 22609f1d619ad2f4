"""DecoderDecodeTarget: the decode bench's view of attnlab.models.Decoder; KV bytes equal the cache's tensors."""

import pytest
import torch

from attnlab.gpt import GenerationOptions
from attnlab.models import Decoder, DecoderConfig, generate
from attnlab.models.decode_target import DecoderDecodeTarget

# grouped-query attention (4 query heads on 2 key/value heads) so that the KV bytes depend on num_kv_heads
TINY = DecoderConfig(vocab_size=96, d_model=64, n_layers=2, num_heads=4, num_kv_heads=2, d_ff=128, context_length=64)


def _model(config=TINY, attn_impl="sdpa"):
    torch.manual_seed(0)
    return Decoder(config, attn_impl=attn_impl).eval()


def test_kv_bytes_match_the_cache_tensors():
    prompt = torch.randint(0, TINY.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))  # (b, t)
    target = DecoderDecodeTarget(_model(), max_tokens=9)  # the cache holds exactly the prompt
    target.prefill(prompt)
    assert target.cache.nbytes > 0
    assert target.kv_bytes(batch=3, length=9) == target.cache.nbytes


def test_steps_after_a_rewind_repeat_generate():
    model = _model()
    prompt = torch.randint(0, TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))  # (b, t)
    expected = generate(model, prompt.tolist(), GenerationOptions(max_new_tokens=4))
    target = DecoderDecodeTarget(model, max_tokens=9)
    first = target.prefill(prompt).argmax(dim=-1, keepdim=True)  # (b, 1)
    for attempt in range(2):
        target.rewind(5)
        token, tokens = first, [first]
        for _ in range(3):
            token = target.step(token).argmax(dim=-1, keepdim=True)  # (b, 1)
            tokens.append(token)
        assert torch.cat(tokens, dim=1).tolist() == expected, attempt


def test_a_window_shorter_than_the_run_is_refused():
    config = DecoderConfig(**{**TINY.__dict__, "layer_windows": (4, None)})
    with pytest.raises(ValueError, match="sliding window of 4 positions is shorter than the 9 decoded positions"):
        DecoderDecodeTarget(_model(config, "flash_torch"), max_tokens=9)


def test_rewind_past_the_cache_is_refused():
    target = DecoderDecodeTarget(_model(), max_tokens=9)
    target.prefill(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shortest row holds 3 tokens to 4"):
        target.rewind(4)
