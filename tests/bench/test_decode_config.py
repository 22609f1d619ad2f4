"""DecodeBenchConfig: every bad value is a one-line ValueError naming it, before any work."""

import pytest

from attnlab.bench.decode_config import QUANT_MODES, DecodeBenchConfig
from attnlab.gpt import GPTConfig

TINY = GPTConfig(vocab_size=96, context_length=64, d_model=32, n_layers=1, n_heads=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"impls": ("nope",)}, "unknown attention implementation 'nope'"),
        ({"impls": ("wrapper",)}, "implementation 'wrapper' has no KV-cache path"),
        ({"impls": ()}, "no implementation selected"),
        ({"quants": ("int3",)}, "unknown quant 'int3'; choose from none, int8, int8_dynamic, int4"),
        ({"quants": ()}, "quants must be a non-empty tuple"),
        ({"quants": ("none", "none")}, "quants repeat: none, none"),
        ({"contexts": ()}, "contexts must be a non-empty tuple"),
        ({"contexts": (8, 8)}, "contexts repeat: 8, 8"),
        ({"contexts": (0,)}, "context must be a positive integer, got 0"),
        ({"contexts": (60,)}, "context 60 \\+ new_tokens 16 = 76 exceeds the model's context_length 64"),
        ({"new_tokens": 0}, "new_tokens must be a positive integer, got 0"),
        ({"batch": True}, "batch must be a positive integer, got True"),
        ({"dtype": "float64"}, "unknown dtype 'float64'"),
        ({"min_run_time": float("inf")}, "min_run_time must be a finite number of seconds"),
        ({"seed": 2**70}, "seed must be an integer"),
        ({"reference": "yes"}, "reference must be True or False"),
        ({"compile": True}, "compile needs decoder=True"),
        ({"decoder": True, "impls": ("ch03",)}, "unknown attention backend 'ch03'"),
        ({"decoder": True, "impls": ("sdpa", "sdpa")}, "impls repeat: sdpa, sdpa"),
        ({"bandwidth_bytes": 0}, "bandwidth_bytes must be a positive integer"),
        ({"device": "cpu", "quants": ("int4",)}, "quant 'int4' needs device cuda and dtype bfloat16"),
    ],
)
def test_bad_values_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message) as caught:
        DecodeBenchConfig(model=TINY, **{"contexts": (8,), **changes})
    assert "\n" not in str(caught.value)


def test_defaults_are_valid_for_gpt2():
    config = DecodeBenchConfig(model=GPTConfig())
    assert config.quants == ("none", "int8") and set(config.quants) <= set(QUANT_MODES)
    assert max(config.contexts) + config.new_tokens <= GPTConfig().context_length


def test_memory_estimate_covers_every_model_and_the_probe():
    one = DecodeBenchConfig(model=TINY, contexts=(8,), quants=("none",), reference=False, bandwidth_bytes=2**20)
    two = DecodeBenchConfig(model=TINY, contexts=(8,), quants=("none", "int8"), reference=True, bandwidth_bytes=2**20)
    assert one.memory_estimate() > one.probe_bytes == 2**20
    assert two.memory_estimate() > one.memory_estimate()  # three models (two quants + transformers') vs one
