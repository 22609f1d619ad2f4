"""flex against the float64 reference, feature by feature, and its refusals.

Error bounds are FlashAttention's rule (see flash_reference.py): at most 2x the naive backend's float32
error for the output (3x for gradients), plus a floor scaled by the reference's magnitude.

FlexAttention compiles one kernel per shape and rule (seconds on the CPU), so the CPU cases pack several
features into each call: three compiled variants in all. On the CPU this PyTorch compiles flex for inference
only (no backward, no log-sum-exp), so sinks and return_lse are checked there through their parts (the sink
formula on naive's differentiable lse; PyTorch's natural-log lse) and whole, with gradients, on CUDA.
"""

from __future__ import annotations

import re

import pytest
import torch
from flash_reference import assert_matches_reference, make_inputs

from attnlab.backends import BACKENDS
from attnlab.backends.flex import FEATURES, apply_sinks

flex = BACKENDS["flex"]
naive = BACKENDS["naive"]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (flex has no CPU backward)")


def slopes(h: int, device: str = "cpu") -> torch.Tensor:
    """ALiBi's geometric slopes 2^-1 .. 2^-h (h, ), steep enough to change every row's weights."""
    return 2.0 ** -torch.arange(1, h + 1, dtype=torch.float32, device=device)  # (h,)


def test_declared_features():
    # Everything but dropout, which FlexAttention has no option for.
    assert {"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "kv_lens", "return_lse"} == FEATURES


@pytest.mark.parametrize("device", DEVICES)
def test_window_softcap_alibi_gqa_with_a_kv_cache(device):
    # t_q = 130 queries at the end of t_k = 200 keys (bottom-right), 128-wide blocks: the window of 40 keys
    # leaves whole key blocks out of some query blocks, so the block mask's skipping is exercised.
    # Inputs scaled by 2 give scores of a few units, which the softcap of 1.5 visibly bends.
    q, k, v, dout = make_inputs(1, 4, 130, 200, 16, h_kv=2, scale=2.0, device=device, seed=1)
    options = {"window": 40, "softcap": 1.5, "alibi_slopes": slopes(4, device)}
    assert_matches_reference(flex, q, k, v, dout, causal=True, grads=device == "cuda", **options)


@pytest.mark.parametrize("device", DEVICES)
def test_kv_lens_window_softcap_alibi_gqa(device):
    # A KV cache's ragged rows (the lengths captured by the mask_mod, one block mask row per batch row): all
    # 40 keys, one key, and 2 keys for 3 queries (its first query sees none: zeros). NaN in the padding past
    # each row's length changes nothing.
    q, k, v, dout = make_inputs(3, 4, 3, 40, 16, h_kv=2, scale=2.0, device=device, seed=3)
    kv_lens = torch.tensor([40, 1, 2], device=device)
    options = {"window": 9, "softcap": 1.5, "alibi_slopes": slopes(4, device), "kv_lens": kv_lens}
    assert_matches_reference(flex, q, k, v, dout, causal=True, grads=device == "cuda", **options)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[1:, :, 2:] = float("nan")
    poisoned_v[1:, :, 2:] = float("nan")
    with torch.no_grad():
        clean, poisoned = flex(q, k, v, **options), flex(q, poisoned_k, poisoned_v, **options)
    assert torch.equal(clean, poisoned) and torch.equal(clean[2, :, 0], torch.zeros_like(clean[2, :, 0]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [True, False])
def test_packed_sequences_mqa(causal, device):
    # Three packed sequences of 50, 1 and 79 tokens, one key/value head for four query heads.
    q, k, v, dout = make_inputs(2, 4, 130, 130, 16, h_kv=1, device=device, seed=2)
    assert_matches_reference(flex, q, k, v, dout, causal=causal, grads=device == "cuda", seq_lens=[50, 1, 79])


def test_apply_sinks_is_the_sink_softmax_with_its_gradients():
    # apply_sinks on naive's (out, lse) without sinks must equal naive with sinks, values and gradients, in
    # float64 (1e-12 of the magnitude: a few ulps of ~10 operations). t_q > t_k leaves the first two rows
    # without keys (lse = -inf): they stay zero, with finite gradients.
    q, k, v, dout = make_inputs(2, 4, 7, 5, 8, h_kv=2, dtype=torch.float64, seed=3)
    sinks = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)

    def composed(q, k, v, causal, sinks):
        out, lse = naive(q, k, v, causal=causal, return_lse=True)
        return apply_sinks(out, lse, sinks)

    def direct(q, k, v, causal, sinks):
        return naive(q, k, v, causal=causal, sinks=sinks)

    results = []
    for fn in (composed, direct):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, sinks)]
        out = fn(*leaves[:3], True, leaves[3])
        results.append((out, *torch.autograd.grad(out, leaves, dout)))
    magnitude = max(t.abs().max().item() for t in results[1])
    for got, want in zip(*results, strict=True):
        assert torch.isfinite(got).all()
        assert (got - want).abs().max().item() <= 1e-12 * magnitude
    assert torch.equal(results[0][0][..., :2, :], torch.zeros_like(results[0][0][..., :2, :]))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_lse_is_a_natural_log():
    # flex.py hands PyTorch's lse on unconverted: this pins that flex_attention's public lse is ln-based (its
    # kernels work in base 2). Checked on the unfused path, which shares the conversion with the kernels; a
    # base-2 lse would differ by a factor ln 2 (30%), float32 rounding by ~1e-6 of the magnitude.
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    q, k, v, _ = make_inputs(1, 2, 6, 6, 8, seed=4)
    with torch.no_grad():
        _, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=True))
    expected = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) / 8**0.5, dim=-1)  # (b, h, t_q)
    assert (aux.lse.double() - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"return_lse": True}, "return_lse"),
        ({"sinks": torch.zeros(2)}, "sinks"),
        ({"return_lse": True, "sinks": torch.zeros(2)}, "return_lse and sinks"),
    ],
)
def test_cpu_refuses_what_needs_the_lse(options, names):
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    message = f"returns no log-sum-exp on the CPU in this PyTorch (inference kernel only), which {names} need"
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        flex(q, k, v, **options)


def test_cpu_refuses_gradients_by_name():
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    with pytest.raises(NotImplementedError, match="no backward pass on the CPU in this PyTorch, and k requires grad"):
        flex(q, k.requires_grad_(), v)
    trainable = slopes(2).requires_grad_()
    with pytest.raises(NotImplementedError, match="and alibi_slopes requires grad"):
        flex(q, k.detach(), v, alibi_slopes=trainable)


def test_refuses_dropout_by_name():
    q, k, v, _ = make_inputs(1, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="the flex backend does not support dropout; backends that do: naive, "):
        flex(q, k, v, dropout_p=0.1)


@CUDA
def test_sinks_window_gqa_with_gradients_on_cuda():
    # The sinks' gradient reaches q, k and v through flex's lse (apply_sinks): checked against the reference.
    q, k, v, dout = make_inputs(1, 4, 130, 200, 16, h_kv=2, device="cuda", seed=5)
    sinks = torch.tensor([-1.0, 0.0, 0.5, 2.0], device="cuda")
    assert_matches_reference(flex, q, k, v, dout, causal=True, window=40, sinks=sinks)


@CUDA
def test_lse_on_cuda():
    # lse against naive's in float64, same rule as the output: 2x naive's float32 error plus the floor.
    q, k, v, _ = make_inputs(2, 4, 100, 150, 16, h_kv=2, device="cuda", seed=6)
    options = {"causal": True, "window": 30, "softcap": 2.0, "sinks": torch.zeros(4, device="cuda")}
    reference = naive(q.double(), k.double(), v.double(), return_lse=True, **options)[1]
    errors = []
    for fn in (naive, flex):
        with torch.no_grad():
            _, lse = fn(q, k, v, return_lse=True, **options)
        assert lse.dtype == torch.float32
        errors.append((lse.double() - reference).abs().max().item())
    assert errors[1] <= 2 * errors[0] + 8 * torch.finfo(torch.float32).eps * reference.abs().max().item()


@pytest.mark.parametrize(("t_q", "t_k"), [(4, 0), (0, 4)])
def test_empty_lengths_give_empty_or_zero_rows_without_compiling(t_q, t_k):
    # Flex cannot build a block mask over zero tokens: the backend answers first, as every backend does
    # (a row that sees no key outputs zeros and has lse -inf).
    q, k, v = torch.randn(1, 2, t_q, 16), torch.randn(1, 1, t_k, 16), torch.randn(1, 1, t_k, 16)
    with torch.no_grad():
        out = BACKENDS["flex"](q, k, v, causal=False)
    assert out.shape == (1, 2, t_q, 16) and torch.equal(out, torch.zeros_like(out))
