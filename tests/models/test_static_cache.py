"""Static KV caches (fixed shapes at every step) and compiled decoding give the tokens of the eager cache."""

from __future__ import annotations

import pytest
import torch

from attnlab.gpt.options import GenerationOptions
from attnlab.models import Decoder, DecoderConfig, generate

# Layer 0 full attention, layer 1 a window of 4: the full cache and the rolling cache both decode.
CONFIG = DecoderConfig(
    vocab_size=53, d_model=32, n_layers=2, num_heads=4, num_kv_heads=2, d_ff=48, context_length=48,
    layer_windows=(None, 4),
)  # fmt: skip
PROMPTS = [[5, 7, 11, 2, 3, 9], [4, 1], [8, 8, 6, 1]]  # different lengths: rows at their own positions


def _model(attn_impl: str) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(CONFIG, attn_impl).eval()
    with torch.no_grad():  # larger weights than the default init, so greedy tokens vary
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("attn_impl", ["naive", "sdpa_mask", "flash_torch", "flash_decode_torch"])
def test_static_cache_gives_the_eager_tokens(attn_impl):
    model = _model(attn_impl)
    options = GenerationOptions(max_new_tokens=12)  # 12 new tokens: well past the window of 4
    expected = generate(model, PROMPTS, options)
    assert expected == [generate(model, [p], options)[0] for p in PROMPTS]  # the batch equals rows alone
    cache = model.new_cache(len(PROMPTS), 24, static=True)
    assert cache.static
    # The generate path with a static cache, without compiling (compile=True adds only torch.compile).
    from attnlab.models.generate import _right_padded

    idx, lens = _right_padded(PROMPTS, torch.device("cpu"))
    with torch.no_grad():
        logits = model(idx, cache, input_lens=lens)
        token = logits[torch.arange(len(PROMPTS)), lens - 1].argmax(-1)
        tokens = [token]
        for _ in range(11):
            token = model(token[:, None], cache)[:, -1].argmax(-1)
            tokens.append(token)
    assert torch.stack(tokens, dim=1).tolist() == expected


def test_compiled_decoding_gives_the_eager_tokens():
    model = _model("naive")
    options = GenerationOptions(max_new_tokens=8)
    from attnlab.models import GenerationStats

    stats = GenerationStats()
    assert generate(model, PROMPTS, options, compile=True, stats=stats) == generate(model, PROMPTS, options)
    assert stats.compile_s > 0 and len(stats.steps) == 6  # step 1 compiles; steps 2..7 are timed apart


def test_a_backend_without_kv_lens_is_refused_before_any_work():
    import dataclasses

    torch.manual_seed(0)  # sdpa's is_causal path has no per-row lengths (nor windows: full attention here)
    model = Decoder(dataclasses.replace(CONFIG, layer_windows=None), "sdpa").eval()
    with pytest.raises(ValueError, match="prompts of different lengths read the cache with per-row lengths"):
        generate(model, PROMPTS, GenerationOptions(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"compile=True \(a static cache\) read the cache"):
        generate(model, [PROMPTS[0]], GenerationOptions(max_new_tokens=2), compile=True)
    assert len(generate(model, [PROMPTS[0]], GenerationOptions(max_new_tokens=2))[0]) == 2  # one row: plain slices
