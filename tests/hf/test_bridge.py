"""attnlab backends inside tiny random transformers models: the logits equal the models' own eager attention.

Every model is built here from a config (no download), float32, 2 layers, 4 query heads over 2 key/value
heads (GQA), 12 tokens. The query/key projections are re-drawn with std 0.5 so the scores span several units:
windows, softcaps and sinks then change the logits by far more than the tolerance (checked below: each
feature, removed, moves the logits by over 1e-2 of their magnitude).

Tolerance: max |logits - eager logits| <= 1e-5 * max |eager logits|. Both are float32 computations of the same
function in a different order; measured differences are ~5e-7 of the magnitude (two layers of ~10 rounded
operations), so the bound leaves a 20x margin for other CPUs' kernels while staying 1000x below any feature's
effect.

A backend that lacks a feature a model needs must refuse it by name (the registry's ValueError); the
parametrisation runs every backend on every model and asserts one or the other, so no case is skipped: when a
backend gains a feature (as flash_torch gained GQA, windows, softcap and sinks), its cases turn into equality checks.
"""

from __future__ import annotations

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnlab import hf  # noqa: E402
from attnlab.backends import BACKENDS, FEATURES  # noqa: E402
from attnlab.hf.attention import make_attention_function  # noqa: E402
from attnlab.hf.masks import attnlab_mask  # noqa: E402

NAMES = hf.register()
RTOL = 1e-5  # of the eager logits' magnitude; see the module docstring
COMMON = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
}
#: The attnlab features each model's attention needs.
NEEDS = {
    "llama": {"gqa"},
    "mistral": {"gqa", "window"},
    "gemma2": {"gqa", "window", "softcap"},
    "gpt_oss": {"gqa", "window", "sinks"},
}
BRIDGED = ["naive", "sdpa_mask", "flash_torch"]


def build(model: str) -> torch.nn.Module:
    """A tiny random model in eval mode; windows of 4 tokens (shorter than the 12 of the inputs)."""
    if model == "llama":
        config, cls = transformers.LlamaConfig(**COMMON), transformers.LlamaForCausalLM
    elif model == "mistral":
        config, cls = transformers.MistralConfig(**COMMON, sliding_window=4), transformers.MistralForCausalLM
    elif model == "gemma2":  # layers alternate sliding window / full attention; softcap 2 on the scores
        config = transformers.Gemma2Config(
            **COMMON,
            sliding_window=4,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=None,
            query_pre_attn_scalar=8,
        )
        cls = transformers.Gemma2ForCausalLM
    else:  # gpt-oss: a learned sink per head, alternating sliding window / full attention, 4 experts
        config = transformers.GptOssConfig(
            **COMMON,
            sliding_window=4,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        cls = transformers.GptOssForCausalLM
    torch.manual_seed(0)
    module = cls(config).eval()
    for layer in module.modules():
        for name in ("q_proj", "k_proj"):
            if isinstance(getattr(layer, name, None), torch.nn.Linear):
                torch.nn.init.normal_(getattr(layer, name).weight, std=0.5)
        if isinstance(getattr(layer, "sinks", None), torch.nn.Parameter):
            torch.nn.init.normal_(layer.sinks, std=2.0)
    return module


def ids(batch: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(0, COMMON["vocab_size"], (batch, t), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, implementation: str, **inputs) -> torch.Tensor:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(**inputs).logits


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def first_missing(backend: str, needs: set[str]) -> str | None:
    """The feature the registry refuses first (it checks them in FEATURES order), or None."""
    return next((f for f in FEATURES if f in needs and f not in BACKENDS[backend].features), None)


def test_names_avoid_the_words_transformers_reserves():
    assert set(NAMES) == set(BACKENDS)
    assert NAMES["flash_torch"] == "attnlab_fa_torch" and NAMES["naive"] == "attnlab_naive"
    for name in NAMES.values():
        assert name.startswith("attnlab_")
        assert not any(word in name for word in ("flash", "sdpa", "flex_attention"))


@pytest.mark.parametrize("backend", BRIDGED)
@pytest.mark.parametrize("model_name", list(NEEDS))
def test_logits_equal_eager(model_name, backend):
    model = build(model_name)
    inputs = {"input_ids": ids()}
    missing = first_missing(backend, NEEDS[model_name])
    if missing is not None:
        with pytest.raises(ValueError, match=f"the {backend} backend does not support {missing}; "):
            logits(model, NAMES[backend], **inputs)
        return
    want = logits(model, "eager", **inputs)
    assert relative_error(logits(model, NAMES[backend], **inputs), want) <= RTOL


def without(keyword: str) -> str:
    """Register attnlab's naive attention with one model keyword dropped; its attn_implementation name."""
    name = f"attnlab_test_without_{keyword}"
    attend = make_attention_function("naive")

    def attention(*args, **kwargs):
        kwargs.pop(keyword)
        return attend(*args, **kwargs)

    transformers.AttentionInterface.register(name, attention)
    transformers.masking_utils.AttentionMaskInterface.register(name, attnlab_mask)
    return name


@pytest.mark.parametrize(("model_name", "keyword"), [("gemma2", "softcap"), ("gpt_oss", "s_aux")])
def test_the_inputs_exercise_softcap_and_sinks(model_name, keyword):
    # Dropping the softcap or the sinks must move the logits far beyond RTOL, else the equality above proves little.
    model = build(model_name)
    inputs = {"input_ids": ids()}
    assert relative_error(logits(model, without(keyword), **inputs), logits(model, "eager", **inputs)) > 1e-2


def test_the_inputs_exercise_the_window():
    model = build("mistral")
    inputs = {"input_ids": ids()}
    windowed = logits(model, "eager", **inputs)
    model.config.sliding_window = None
    assert relative_error(logits(model, "eager", **inputs), windowed) > 1e-2


def test_a_dropped_window_is_caught_by_the_mask_check():
    # The sliding-window mask reaches attnlab as transformers' boolean mask and is checked against the
    # backend's rule: a layer that forgot its window is refused, not computed without it.
    model = build("mistral")
    with pytest.raises(
        ValueError, match=re.escape("cannot express this attention mask with its rule (causal=True, window=None)")
    ):
        logits(model, without("sliding_window"), input_ids=ids())


@pytest.mark.parametrize("backend", BRIDGED)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding(side, backend):
    # Row 0 has 4 padding tokens; its real tokens' logits must equal eager's (padding positions mean nothing).
    model = build("mistral")
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    pad = slice(0, 4) if side == "left" else slice(8, 12)
    attention_mask[0, pad] = 0
    inputs = {"input_ids": ids(), "attention_mask": attention_mask}
    real = attention_mask.bool()  # (b, t)
    got, want = logits(model, NAMES[backend], **inputs), logits(model, "eager", **inputs)
    assert relative_error(got[real], want[real]) <= RTOL


@pytest.mark.parametrize("backend", BRIDGED)
def test_packed_sequences_from_position_ids(backend):
    # One row packing sequences of 5, 3 and 4 tokens (positions restart at 0): transformers finds the packing
    # in position_ids (only without a cache) and masks across sequences; attnlab turns that mask into seq_lens.
    model = build("gemma2" if "softcap" in BACKENDS[backend].features else "mistral")
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])
    inputs = {"input_ids": ids(batch=1), "position_ids": position_ids, "use_cache": False}
    want = logits(model, "eager", **inputs)
    assert relative_error(logits(model, NAMES[backend], **inputs), want) <= RTOL
    # The packing matters: the same tokens unpacked give other logits.
    assert relative_error(logits(model, "eager", input_ids=inputs["input_ids"], use_cache=False), want) > 1e-2


@pytest.mark.parametrize("backend", [name for name in BRIDGED if "sinks" in BACKENDS[name].features])
@pytest.mark.parametrize("left_padding", [0, 3])
def test_decoding_with_a_cache(left_padding, backend):
    # Prefill 7 tokens, then decode 5 one at a time through the KV cache (sliding-window layers keep only the
    # window): every step's logits equal eager's. With left padding the cached keys start with padding.
    model = build("gpt_oss")
    tokens = ids(t=12)
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, :left_padding] = 0
    steps = {}
    for implementation in ("eager", NAMES[backend]):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            out = model(input_ids=tokens[:, :7], attention_mask=attention_mask[:, :7], use_cache=True)
            cache, per_step = out.past_key_values, [out.logits[:, -1]]
            for i in range(7, 12):
                out = model(input_ids=tokens[:, i : i + 1], attention_mask=attention_mask[:, : i + 1], cache=cache)
                cache = out.past_key_values
                per_step.append(out.logits[:, -1])
        steps[implementation] = torch.stack(per_step)  # (6, b, vocab)
    assert relative_error(steps[NAMES[backend]], steps["eager"]) <= RTOL


def test_training_dropout_is_refused_by_backends_without_it():
    model = build("llama")
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.train()
    model.set_attn_implementation(NAMES["flex"])
    with pytest.raises(ValueError, match="the flex backend does not support dropout; "):
        model(input_ids=ids())
    model.set_attn_implementation(NAMES["naive"])
    model(input_ids=ids()).logits.sum().backward()  # naive does dropout, with gradients


def test_output_attentions_is_refused():
    model = build("llama")
    model.set_attn_implementation(NAMES["naive"])
    with pytest.raises(ValueError, match="returns no attention weights"):
        model(input_ids=ids(), output_attentions=True)


def test_register_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hf, "missing_packages_reason", lambda names: "needs the missing package(s): transformers")
    with pytest.raises(ImportError, match="pip install transformers"):
        hf.register()
