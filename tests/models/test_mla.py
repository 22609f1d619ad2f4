"""Multi-head latent attention: the absorbed path equals the expanded one, the latent cache equals no cache,
the cache holds (kv_lora_rank + qk_rope_head_dim) values per position and layer, options are refused by name."""

from __future__ import annotations

import pytest
import torch

from attnlab.gpt.options import GenerationOptions
from attnlab.models import Decoder, DecoderConfig, MLAConfig, RopeConfig, generate
from attnlab.models.mla import LatentAttention, LatentLayerCache, mla_softmax_scale, set_mla_absorb

VOCAB = 61
YARN = RopeConfig(
    rope_type="yarn", factor=4.0, original_context_length=16, mscale=1.0, mscale_all_dim=0.8, interleaved=True
)
CONFIGS = {
    # query bottleneck, values narrower than query/key heads, interleaved YaRN (positions past 16 are stretched)
    "lora_yarn": DecoderConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        num_heads=4,
        d_ff=48,
        context_length=64,
        rope=YARN,
        mla=MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, q_lora_rank=24),
        model_type="deepseek_v3",
    ),
    # plain query projection, values wider than query/key heads, rope in halves, biases
    "plain": DecoderConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        num_heads=4,
        d_ff=48,
        context_length=64,
        qkv_bias=True,
        out_bias=True,
        mla=MLAConfig(kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=16),
        model_type="deepseek_v3",
    ),
}
# float32: the absorbed path multiplies the same numbers in another order ((W_UK^T q) . c instead of
# q . (W_UK c), and W_UV after the weighted sum instead of before), so the two differ by rounding only: a few
# ulps of the logits' magnitude per layer. 1e-4 of the largest logit leaves a wide margin on any CPU (measured
# ~2e-7). float64: the same reassociation at float64's 2.2e-16 precision; 1e-10 still leaves a wide margin.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _model(name: str, dtype: torch.dtype = torch.float32, attn_impl: str = "naive", seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(CONFIGS[name], attn_impl)
    with torch.no_grad():  # random norms too, so that every parameter matters
        for param_name, param in model.named_parameters():
            if "norm" in param_name or param_name.endswith("bias"):
                param.normal_(1.0 if "norm" in param_name else 0.0, 0.3)
    return model.to(dtype).eval()


def _tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["naive", "sdpa", "flash_torch"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_absorbed_equals_expanded(name, impl, dtype):
    model = _model(name, dtype, impl)
    idx = _tokens(2, 40)  # past the original context of 16 positions of the YaRN config
    with torch.no_grad():
        expanded = model(idx)
        assert set_mla_absorb(model, True) == 2
        absorbed = model(idx)
    assert _relative_error(absorbed, expanded) <= RTOL[dtype]


@pytest.mark.parametrize("absorb", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_latent_cache_equals_no_cache(name, absorb):
    model = _model(name, torch.float64)
    set_mla_absorb(model, absorb)
    idx = _tokens(2, 30, seed=3)
    expansions = []  # the absorbed path never expands the latents to per-head keys/values (kv_b_proj unused)
    model.blocks[0].attn.kv_b_proj.register_forward_hook(lambda *args: expansions.append(1))
    with torch.no_grad():
        expected = model(idx)  # (2, 30, vocab)
        cache = model.new_cache(2, 30)
        pieces = [model(idx[:, :9], cache)]  # a prompt, then single tokens, then a multi-token step
        pieces += [model(idx[:, i : i + 1], cache) for i in range(9, 20)]
        pieces.append(model(idx[:, 20:], cache))
    got = torch.cat(pieces, dim=1)  # (2, 30, vocab)
    assert _relative_error(got, expected) <= RTOL[torch.float64]
    assert cache.lengths.tolist() == [30, 30]
    assert (len(expansions) == 0) == absorb


@pytest.mark.parametrize("name", list(CONFIGS))
def test_absorbed_and_expanded_generate_the_same_tokens(name):
    model = _model(name)
    prompts = [_tokens(1, 6, seed=5)[0].tolist(), _tokens(1, 6, seed=6)[0].tolist()]
    options = GenerationOptions(max_new_tokens=12)
    expanded = generate(model, prompts, options)
    set_mla_absorb(model, True)
    assert generate(model, prompts, options) == expanded
    assert generate(model, prompts, GenerationOptions(max_new_tokens=12, use_cache=False)) == expanded


@pytest.mark.parametrize("absorb", [False, True])
def test_rows_of_different_lengths_equal_rows_alone(absorb):
    model = _model("lora_yarn")
    set_mla_absorb(model, absorb)
    prompts = [_tokens(1, n, seed=n)[0].tolist() for n in (3, 9, 6)]
    options = GenerationOptions(max_new_tokens=10)
    alone = [generate(model, [prompt], options)[0] for prompt in prompts]
    assert generate(model, prompts, options) == alone  # right-padded prompt, then per-row kv_lens


@pytest.mark.parametrize("absorb", [False, True])
def test_static_latent_cache_equals_no_cache(absorb):
    model = _model("plain", torch.float64)
    set_mla_absorb(model, absorb)
    idx = _tokens(2, 12, seed=4)
    with torch.no_grad():
        expected = model(idx)  # (2, 12, vocab)
        cache = model.new_cache(2, 16, static=True)  # fixed shapes: the whole buffer read with kv_lens every step
        pieces = [model(idx[:, :5], cache)] + [model(idx[:, i : i + 1], cache) for i in range(5, 12)]
    assert _relative_error(torch.cat(pieces, dim=1), expected) <= RTOL[torch.float64]


def test_latent_attention_refuses_other_caches():
    model = _model("plain")
    grouped = Decoder(DecoderConfig(vocab_size=VOCAB, d_model=32, n_layers=2, num_heads=4, d_ff=16, context_length=8))
    with pytest.raises(ValueError, match="caches latents \\(LatentLayerCache\\); got a FullLayerCache"):
        model(_tokens(1, 3), grouped.new_cache(1, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_latent_cache_bytes_per_token(name, dtype):
    config = CONFIGS[name]
    mla = config.mla
    model = _model(name, dtype, "sdpa")
    batch, max_tokens = 3, 20
    cache = model.new_cache(batch, max_tokens)
    assert cache.nbytes == 0  # allocated on the first step
    with torch.no_grad():
        model(_tokens(batch, 5), cache)
    element = torch.empty((), dtype=dtype).element_size()
    for layer in cache.layers:
        assert isinstance(layer, LatentLayerCache)
        assert layer.entries.dtype == dtype
        assert layer.latent.shape == (batch, max_tokens, mla.kv_lora_rank)
        assert layer.rope_keys.shape == (batch, max_tokens, mla.qk_rope_head_dim)
        per_token = layer.nbytes / (batch * max_tokens)  # measured from the allocated buffer
        assert per_token == (mla.kv_lora_rank + mla.qk_rope_head_dim) * element
    # A full KV cache of the same model keeps every head's key (qk_nope + qk_rope) and value (v_head_dim).
    full_per_token = config.num_heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim) * element
    latent_per_token = cache.nbytes / (batch * max_tokens * config.n_layers)
    assert latent_per_token < full_per_token
    assert full_per_token / latent_per_token == pytest.approx(
        config.num_heads
        * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim)
        / (mla.kv_lora_rank + mla.qk_rope_head_dim)
    )


def test_softmax_scale_includes_yarn_mscale():
    import math

    config = CONFIGS["lora_yarn"]
    mscale = 0.1 * 0.8 * math.log(4.0) + 1.0  # yarn_get_mscale(factor, mscale_all_dim)
    assert mla_softmax_scale(config) == pytest.approx(12**-0.5 * mscale**2, rel=1e-12)
    assert mla_softmax_scale(CONFIGS["plain"]) == pytest.approx(10**-0.5, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(num_kv_heads=2), "num_kv_heads=2"),
        (dict(layer_windows=(4, None)), "sliding window"),
        (dict(attn_softcap=30.0), "attn_softcap"),
        (dict(sinks=True), "sinks"),
        (dict(qk_norm=True), "qk_norm"),
    ],
)
def test_unsupported_options_are_refused_by_name(change, message):
    from dataclasses import replace

    config = replace(CONFIGS["plain"], **change)
    with pytest.raises(ValueError, match=f"multi-head latent attention does not support.*{message}"):
        Decoder(config, "naive")


def test_absorb_option_is_checked():
    model = _model("plain")
    layer = model.blocks[0].attn
    assert isinstance(layer, LatentAttention) and layer.absorb is False
    with pytest.raises(ValueError, match="absorb must be True or False, got 'yes'"):
        layer.set_absorb("yes")
    llama = Decoder(DecoderConfig(vocab_size=VOCAB, d_model=16, n_layers=1, num_heads=2, d_ff=16, context_length=8))
    with pytest.raises(ValueError, match="no multi-head latent attention layers"):
        set_mla_absorb(llama, True)
