"""The serving engine: continuous batching gives every request the tokens it gets alone."""

from __future__ import annotations

import pytest
import torch

from attnlab.gpt.options import GenerationOptions
from attnlab.models import Decoder, DecoderConfig, generate
from attnlab.serving import Engine

CONFIG = DecoderConfig(
    vocab_size=61, d_model=32, n_layers=2, num_heads=4, num_kv_heads=2, d_ff=48, context_length=64,
    layer_windows=(None, 6),
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Decoder(CONFIG, "flash_torch").eval()
    with torch.no_grad():  # larger weights than the default init, so greedy choices are not all one token
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model


def _prompts(count: int, seed: int, low: int = 1, high: int = 20) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=generator).tolist()
    return [torch.randint(0, CONFIG.vocab_size, (n,), generator=generator).tolist() for n in lengths]


def test_fifty_requests_through_a_small_pool_match_each_alone(model):
    prompts = _prompts(50, seed=1)
    new_tokens = torch.randint(1, 12, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    options = [GenerationOptions(max_new_tokens=n) for n in new_tokens]
    # 12 blocks of 4 tokens: room for two or three requests at a time, so most of them wait for blocks.
    engine = Engine(model, block_size=4, num_blocks=12, max_batch=8)
    got = engine.generate(prompts, options)
    alone = [generate(model, [p], o)[0] for p, o in zip(prompts, options, strict=True)]
    assert got == alone
    assert engine.cache.pool.num_free == engine.num_blocks  # every block is back in the pool
    assert not engine.running and not engine.waiting
    assert engine.steps < sum(new_tokens)  # requests ran side by side, not one after another


def test_shared_prefix_is_stored_once(model):
    prefix = list(range(1, 9))  # two full blocks of 4 tokens
    prompts = [[*prefix, 20, 21, 22], [*prefix, 30, 31]]
    engine = Engine(model, block_size=4, num_blocks=16, max_batch=4)
    got = engine.generate(prompts, max_new_tokens=5)
    assert engine.cache.shared_blocks == 2  # the second prompt reused the first one's two prefix blocks
    assert got == [generate(model, [p], GenerationOptions(max_new_tokens=5))[0] for p in prompts]


def test_sampling_options_per_request_are_reproducible(model):
    prompts = _prompts(6, seed=3)
    options = [GenerationOptions(max_new_tokens=6, temperature=1.0, top_k=10, seed=i) for i in range(6)]
    first = Engine(model, block_size=4, max_batch=3).generate(prompts, options)
    second = Engine(model, block_size=4, max_batch=6).generate(prompts, options)
    assert first == second


def test_stream_yields_each_requests_tokens_in_order(model):
    prompts = _prompts(5, seed=4)
    engine = Engine(model, block_size=8, max_batch=2)
    streamed: list[list[int]] = [[] for _ in prompts]
    for index, token in engine.stream(prompts, max_new_tokens=4):
        streamed[index].append(token)
    assert streamed == [generate(model, [p], GenerationOptions(max_new_tokens=4))[0] for p in prompts]


def test_request_that_can_never_fit_is_refused(model):
    engine = Engine(model, block_size=4, num_blocks=3, max_batch=2)
    with pytest.raises(ValueError, match="needs 5 blocks of 4 tokens; the pool has only 3"):
        engine.add_request(list(range(10)), GenerationOptions(max_new_tokens=10))
    with pytest.raises(ValueError, match="exceeds the context_length 64"):
        engine.add_request(list(range(60)), GenerationOptions(max_new_tokens=10))
    with pytest.raises(ValueError, match=r"prompt token 99 is outside the vocabulary \[0, 61\)"):
        engine.add_request([1, 99])
