"""AttentionSpec: every invalid option or tensor is a ValueError naming the value, raised before any work; every
backend refuses, by name, each feature it does not declare, and names the backends that do it."""

from __future__ import annotations

import re

import pytest
import torch

from attnlab.backends import BACKENDS, FEATURES, AttentionSpec, backends_with


def qkv(h: int = 2, h_kv: int = 2, t_q: int = 4, t_k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(1, h, t_q, 8), torch.randn(1, h_kv, t_k, 8), torch.randn(1, h_kv, t_k, 8)


# -- options, checked when the spec is built -------------------------------------------------------------

WINDOW_MESSAGE = "window must be a positive int (keys a query sees, itself included), got {!r}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 3, "causal": False}, "window=3 needs causal=True (a sliding window looks back only)"),
        ({"window": 0}, WINDOW_MESSAGE.format(0)),
        ({"window": -2}, WINDOW_MESSAGE.format(-2)),
        ({"window": True}, WINDOW_MESSAGE.format(True)),
        ({"window": 1.5}, WINDOW_MESSAGE.format(1.5)),
        ({"softcap": 0}, "softcap must be a finite number > 0, got 0"),
        ({"softcap": -1.0}, "softcap must be a finite number > 0, got -1.0"),
        ({"softcap": float("nan")}, "softcap must be a finite number > 0, got nan"),
        ({"softcap": float("inf")}, "softcap must be a finite number > 0, got inf"),
        ({"softcap": "1"}, "softcap must be a finite number > 0, got '1'"),
        ({"softcap": True}, "softcap must be a finite number > 0, got True"),
        ({"scale": 0.0}, "scale must be a finite number > 0, got 0.0"),
        ({"causal": 1}, "causal must be True or False, got 1"),
        ({"return_lse": "yes"}, "return_lse must be True or False, got 'yes'"),
        ({"dropout_p": 1.0}, "dropout_p 1.0 must be in [0, 1)"),
        ({"seq_lens": [2, 0]}, "seq_lens must hold positive ints, got 0 in [2, 0]"),
        ({"seq_lens": [2, -1]}, "seq_lens must hold positive ints, got -1 in [2, -1]"),
        ({"seq_lens": [2.0, 2]}, "seq_lens must hold positive ints, got 2.0 in [2.0, 2]"),
        ({"seq_lens": []}, "seq_lens must be a non-empty list of positive ints, got []"),
        ({"seq_lens": 4}, "seq_lens must be a non-empty list of positive ints, got 4"),
        (
            {"seq_lens": torch.tensor([2.0, 2.0])},
            "seq_lens must be a 1-D integer tensor or a list of ints, got a torch.float32 tensor of shape (2,)",
        ),
        (
            {"seq_lens": torch.tensor([[2, 2]])},
            "seq_lens must be a 1-D integer tensor or a list of ints, got a torch.int64 tensor of shape (1, 2)",
        ),
        ({"kv_lens": [3]}, "kv_lens must be a 1-D integer tensor (one length per batch row), got list"),
        (
            {"kv_lens": torch.tensor([3.0])},
            "kv_lens must be a 1-D integer tensor (one length per batch row), got a torch.float32 tensor of shape (1,)",
        ),
        (
            {"kv_lens": torch.tensor([True])},
            "kv_lens must be a 1-D integer tensor (one length per batch row), got a torch.bool tensor of shape (1,)",
        ),
        (
            {"kv_lens": torch.tensor(3)},
            "kv_lens must be a 1-D integer tensor (one length per batch row), got a torch.int64 tensor of shape ()",
        ),
        (
            {"kv_lens": torch.tensor([4]), "seq_lens": [4]},
            "kv_lens cannot be combined with seq_lens (per-row key lengths vs packed sequences in one row)",
        ),
    ],
    ids=lambda x: repr(x) if isinstance(x, dict) else "",
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionSpec(**options)
    with pytest.raises(ValueError, match=re.escape(message)):  # the backend keywords build the same spec
        BACKENDS["naive"](*qkv(), **options)


def test_good_options_are_kept():
    spec = AttentionSpec(window=3, softcap=30, seq_lens=torch.tensor([1, 3]), return_lse=True)
    assert spec.seq_lens == (1, 3) and spec.seq_starts() == (0, 1) and spec.softcap == 30


# -- tensors, checked by spec.check (every backend, before any work) -------------------------------------


def bad_tensor_cases() -> list[tuple[dict, dict, str]]:
    """(qkv shape arguments, options, message)."""
    return [
        ({}, {"seq_lens": [1, 2]}, "seq_lens [1, 2] sum to 3, not to t=4 tokens"),
        ({"t_k": 5}, {"seq_lens": [4]}, "seq_lens packs self-attention and needs t_q == t_k, got t_q=4, t_k=5"),
        ({}, {"sinks": torch.zeros(3)}, "sinks must have shape (2,), one value per query head, got (3,)"),
        ({"h": 4}, {"sinks": torch.zeros(2)}, "sinks must have shape (4,), one value per query head, got (2,)"),
        ({}, {"sinks": torch.zeros(1, 2)}, "sinks must have shape (2,), one value per query head, got (1, 2)"),
        ({}, {"sinks": torch.zeros(2, dtype=torch.int64)}, "sinks must be floating point, got torch.int64"),
        ({}, {"sinks": torch.zeros(2, device="meta")}, "sinks is on meta but q is on cpu"),
        ({}, {"sinks": [0.0, 0.0]}, "sinks must be a tensor of shape (heads,), got list"),
        ({}, {"alibi_slopes": torch.ones(3)}, "alibi_slopes must have shape (2,), one value per query head, got (3,)"),
        (
            {},
            {"alibi_slopes": torch.ones(2, dtype=torch.int32)},
            "alibi_slopes must be floating point, got torch.int32",
        ),
        ({}, {"alibi_slopes": torch.ones(2, device="meta")}, "alibi_slopes is on meta but q is on cpu"),
        ({}, {"kv_lens": torch.tensor([4, 4])}, "kv_lens must have shape (1,), one length per batch row, got (2,)"),
        ({}, {"kv_lens": torch.tensor([4], device="meta")}, "kv_lens is on meta but q is on cpu"),
        ({}, {"kv_lens": torch.tensor([0])}, "kv_lens must lie in [1, t_k=4], got values from 0 to 0: [0]"),
        ({"t_k": 3}, {"kv_lens": torch.tensor([4])}, "kv_lens must lie in [1, t_k=3], got values from 4 to 4: [4]"),
        (
            {"h": 3},
            {},
            "q has 3 heads and k, v have 2: the query heads must be a positive multiple of the key/value heads",
        ),
        ({"h": 2, "h_kv": 4}, {}, "q has 2 heads and k, v have 4"),
    ]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("shape", "options", "message"), bad_tensor_cases())
def test_bad_tensors(name, shape, options, message):
    q, k, v = qkv(**shape)
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionSpec(**options).check(q, k, v)
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name](q, k, v, **options)


# -- features a backend does not declare are refused by name ---------------------------------------------


def call_using(feature: str) -> tuple[tuple[torch.Tensor, ...], dict]:
    """Inputs and keywords of a call that uses ``feature`` and no other optional feature."""
    h_kv = 1 if feature == "gqa" else 2
    options = {
        "gqa": {},
        "window": {"window": 2},
        "softcap": {"softcap": 30.0},
        "sinks": {"sinks": torch.zeros(2)},
        "alibi_slopes": {"alibi_slopes": torch.ones(2)},
        "seq_lens": {"seq_lens": [1, 3]},
        "kv_lens": {"kv_lens": torch.tensor([3])},
        "return_lse": {"return_lse": True},
        "dropout": {"dropout_p": 0.1},
    }[feature]
    q, k, v = qkv(h_kv=h_kv)
    assert AttentionSpec(**options).features(q, k) == (feature,)
    return (q, k, v), options


UNDECLARED = [
    (name, feature) for name, backend in BACKENDS.items() for feature in FEATURES if feature not in backend.features
]


def test_every_feature_has_a_trigger_and_a_backend():
    for feature in FEATURES:
        call_using(feature)
        assert backends_with(feature), f"no backend does {feature}"


@pytest.mark.parametrize(("name", "feature"), UNDECLARED)
def test_undeclared_features_are_refused_by_name(name, feature):
    (q, k, v), options = call_using(feature)
    able = ", ".join(backends_with(feature))
    message = f"the {name} backend does not support {feature}; backends that do: {able}"
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name](q, k, v, **options)
    with pytest.raises(ValueError, match=re.escape(message)):
        BACKENDS[name].attend(q, k, v, AttentionSpec(**options))


def test_unknown_feature_name():
    with pytest.raises(ValueError, match="unknown attention feature 'telepathy'"):
        backends_with("telepathy")


def test_unknown_tuning_keywords_are_refused_by_name():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="the naive backend takes no block_m; its tuning keywords: none"):
        BACKENDS["naive"].attend(q, q, q, AttentionSpec(), block_m=4)
    with pytest.raises(
        ValueError, match="the flash_torch backend takes no config; its tuning keywords: block_m, block_n"
    ):
        BACKENDS["flash_torch"].attend(q, q, q, AttentionSpec(), config=None)


def test_kv_lens_values_are_not_read_while_compiling(monkeypatch):
    # Under torch.compile reading a tensor's values would break the graph: the value check is skipped there,
    # while the shape and device checks (static) still run.
    q, k, v = qkv()
    spec = AttentionSpec(kv_lens=torch.tensor([9]))  # 9 > t_k = 4: refused when not compiling
    with pytest.raises(ValueError, match=re.escape("kv_lens must lie in [1, t_k=4]")):
        spec.check(q, k, v)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    spec.check(q, k, v)
    with pytest.raises(ValueError, match=re.escape("kv_lens must have shape (1,)")):
        AttentionSpec(kv_lens=torch.tensor([4, 4])).check(q, k, v)


def test_kv_lens_spec_compiles_without_graph_breaks():
    # The whole check inside a compiled function: no graph break (fullgraph) from reading kv_lens.
    q, k, v = qkv()
    lengths = torch.tensor([3])

    @torch.compile(fullgraph=True, backend="eager")
    def checked(q, k, v, lengths):
        AttentionSpec(kv_lens=lengths).check(q, k, v)
        return q * 2

    assert torch.equal(checked(q, k, v, lengths), q * 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 2**64}, f"window {2**64} exceeds 2**62 (no sequence is that long)"),
        ({"softcap": 1e39}, "softcap 1e+39 exceeds 1e+30 (it would overflow float32)"),
    ],
)
def test_options_beyond_what_the_arithmetic_can_hold_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionSpec(**options)
