"""attnlab.models against transformers on tiny random checkpoints: logits, greedy tokens, caches, padding."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from tiny_hf import TINY, VOCAB, load_hf, save_tiny

from attnlab.backends import BACKENDS
from attnlab.gpt.options import GenerationOptions
from attnlab.models import from_hf, generate
from attnlab.models.attention import layer_features

NAMES = [*TINY, "gpt2"]
IMPLS = ["naive", "sdpa", "sdpa_mask", "flash_torch"]
# float32 logits of two implementations of the same math differ by rounding only: a few ulps of the logits'
# magnitude per layer. 1e-4 of the largest logit leaves a wide margin on any CPU (measured: below 1e-6).
RTOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {name: save_tiny(name, tmp_path_factory.mktemp(name)) for name in NAMES}


@pytest.fixture(scope="module")
def hf_models(checkpoints):
    return {name: load_hf(path) for name, path in checkpoints.items()}


def _supported(name: str, impl: str, checkpoints) -> bool:
    from attnlab.models import read_config

    config = read_config(checkpoints[name])
    needed = {feature for layer in range(config.n_layers) for feature in layer_features(config, layer)}
    return needed <= set(BACKENDS[impl].features)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name, impl, checkpoints, hf_models):
    if not _supported(name, impl, checkpoints):
        with pytest.raises(ValueError, match=f"the {impl} backend does not support"):
            from_hf(checkpoints[name], impl)
        return
    model = from_hf(checkpoints[name], impl)
    # 70 tokens: past every tiny window and, for llama3_scaled, past the original context of 16 positions.
    idx = torch.randint(0, VOCAB, (2, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_models[name](idx).logits
        got = model(idx)
    assert (got - expected).abs().max() <= RTOL * expected.abs().max()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_match_transformers_with_and_without_cache(name, checkpoints, hf_models):
    model = from_hf(checkpoints[name], "flash_torch")
    prompt = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # 25 new tokens: generation continues well past the sliding windows (5 and 6)
        expected = hf_models[name].generate(prompt, max_new_tokens=25, do_sample=False)[0, 7:].tolist()
    assert generate(model, prompt, GenerationOptions(max_new_tokens=25)) == [expected]
    assert generate(model, prompt, GenerationOptions(max_new_tokens=25, use_cache=False)) == [expected]


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "deepseek_v3"])
def test_left_padded_batch_equals_rows_alone(name, checkpoints, hf_models):
    model = from_hf(checkpoints[name], "naive")
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 9, 6)]
    alone = [generate(model, [p], GenerationOptions(max_new_tokens=12))[0] for p in prompts]
    longest = max(len(p) for p in prompts)
    idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])  # left padding, as transformers expects
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    assert generate(model, idx, GenerationOptions(max_new_tokens=12), attention_mask=mask) == alone
    with torch.no_grad():
        expected = hf_models[name].generate(idx, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert expected[:, longest:].tolist() == alone


@pytest.mark.parametrize("name", [name for name in NAMES if name.startswith("deepseek_v3")])
def test_mla_absorbed_matches_transformers(name, checkpoints, hf_models):
    from attnlab.models.mla import set_mla_absorb

    model = from_hf(checkpoints[name], "sdpa")
    set_mla_absorb(model, True)  # attention in the latent space, against the cached latents (no expansion)
    idx = torch.randint(0, VOCAB, (2, 70), generator=torch.Generator().manual_seed(0))
    prompt = idx[:1, :7]
    with torch.no_grad():
        expected = hf_models[name](idx).logits
        got = model(idx)
        expected_tokens = hf_models[name].generate(prompt, max_new_tokens=25, do_sample=False)[0, 7:].tolist()
    assert (got - expected).abs().max() <= RTOL * expected.abs().max()
    assert generate(model, prompt, GenerationOptions(max_new_tokens=25)) == [expected_tokens]


def test_tiny_deepseek_v3_has_dense_and_expert_layers(checkpoints):
    from attnlab.models.mla import LatentAttention
    from attnlab.models.moe import MoEFeedForward

    model = from_hf(checkpoints["deepseek_v3"], "naive")  # so the tests above cover DeepSeek's experts too
    assert [isinstance(block.ffn, MoEFeedForward) for block in model.blocks] == [False, True]
    assert all(isinstance(block.attn, LatentAttention) for block in model.blocks)
