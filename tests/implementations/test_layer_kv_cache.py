"""The KV-cache path of the attention implementations, and the per-layer cache itself."""

import re

import pytest
import torch

from attnlab import AttentionWeights
from attnlab.implementations import IMPLEMENTATIONS
from attnlab.implementations.kv_cache import LayerKVCache
from attnlab.registry import build

WITH_CACHE = {"ch03", "einsum", "fused_qkv", "sdpa", "sdpa_mask", "flex"}
# flex compiles per shape (seconds on the CPU); its cached path is fused_qkv's with another backend.
FAST_WITH_CACHE = sorted(WITH_CACHE - {"flex"})
# float32, same products in a different grouping: measured at most 1.2e-7 relative to the full pass's largest
# output (0 for ch03 and fused_qkv); 1e-5 leaves 80x headroom, while a misaligned mask or a dropped cached key
# changes outputs by 1e-2 or more.
TOL = 1e-5


def test_supports_kv_cache_marks_the_implementations_with_attend_cached():
    marked = {name for name, cls in IMPLEMENTATIONS.items() if cls.supports_kv_cache()}
    assert WITH_CACHE <= marked
    assert not marked & {"wrapper", "torch_mha", "torch_mha_fast"}


def make(name, weights):
    module = build(name, d_in=12, d_out=16, num_heads=4, context_length=10, qkv_bias=True).eval()
    module.set_weights(weights)
    return module


@pytest.mark.parametrize("name", FAST_WITH_CACHE)
def test_chunks_through_the_cache_equal_one_full_pass(name):
    generator = torch.Generator().manual_seed(0)
    module = make(name, AttentionWeights.random(12, 16, qkv_bias=True, generator=generator))
    x = torch.randn(2, 9, 12, generator=generator)  # (b, t, d_in)
    cache = LayerKVCache(max_tokens=10)
    with torch.no_grad():
        full = module(x)  # (b, t, d_out)
        chunks = [module.forward_cached(x[:, start:end], cache) for start, end in ((0, 4), (4, 5), (5, 9))]
    assert cache.length == 9
    cached = torch.cat(chunks, dim=1)  # (b, t, d_out)
    assert ((cached - full).abs().max() / full.abs().max()).item() <= TOL


def test_implementation_without_a_cache_path_says_so():
    module = make("wrapper", AttentionWeights.random(12, 16, qkv_bias=True))
    with pytest.raises(NotImplementedError, match="WrapperAttention has no KV-cache path"):
        module.forward_cached(torch.randn(1, 2, 12), LayerKVCache(4))


def test_cache_overflow_and_mismatch_are_clear_errors():
    cache = LayerKVCache(max_tokens=4)
    keys = torch.randn(2, 3, 3, 8)  # (b, h, t, hd)
    stored_keys, stored_values = cache.append(keys, keys + 1)
    assert torch.equal(stored_keys, keys) and torch.equal(stored_values, keys + 1)
    with pytest.raises(ValueError, match="KV cache holds 3 tokens; adding 3 exceeds its max_tokens 4"):
        cache.append(keys, keys)
    with pytest.raises(ValueError, match="do not fit a cache holding batch 2, 3 heads, head_dim 8"):
        cache.append(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match="positive integer"):
        LayerKVCache(0)


def test_truncate_forgets_the_tail():
    cache = LayerKVCache(max_tokens=5)
    first = torch.randn(1, 2, 3, 4)
    cache.append(first, first)
    cache.truncate(1)
    second = torch.randn(1, 2, 2, 4)
    stored_keys, _ = cache.append(second, second)
    assert torch.equal(stored_keys, torch.cat([first[:, :, :1], second], dim=2))
    with pytest.raises(ValueError, match="cannot truncate a KV cache of length 3 to 4"):
        cache.truncate(4)


def test_keys_of_another_dtype_are_refused_not_cast():
    cache = LayerKVCache(max_tokens=4)
    cache.append(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1, 3))
    other = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    message = "keys are torch.float64 on cpu; this cache holds torch.float32 on cpu"
    with pytest.raises(ValueError, match=re.escape(message)):
        cache.append(other, other)
