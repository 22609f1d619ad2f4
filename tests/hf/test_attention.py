"""The transformers attention function of a backend, called directly as a model's attention layer calls it."""

from __future__ import annotations

import pytest
import torch

from attnlab.backends import BACKENDS, Backend
from attnlab.hf.attention import make_attention_function

naive = BACKENDS["naive"]


class Layer(torch.nn.Module):
    """Stands for a transformers attention module: the function reads only ``is_causal`` from it."""

    is_causal = True


def qkv(b: int = 1, t: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, 4, t, 8, generator=gen)  # (b, h, t, d)
    k, v = torch.randn(b, 2, t, 8, generator=gen), torch.randn(b, 2, t, 8, generator=gen)  # (b, h_kv, t, d)
    return q, k, v


def test_layout_and_options_pass_through():
    # (b, t, h, d) out, no weights; scaling, window, softcap and sinks reach the spec. Same backend, same
    # function: equal up to the transpose (exactly).
    q, k, v = qkv(b=2)
    sinks = torch.tensor([0.0, 1.0, -1.0, 2.0])
    out, weights = make_attention_function("naive")(
        Layer(), q, k, v, None, scaling=0.3, sliding_window=3, softcap=2.0, s_aux=sinks
    )
    assert weights is None and out.shape == (2, 9, 4, 8)
    expected = naive(q, k, v, scale=0.3, window=3, softcap=2.0, sinks=sinks)  # (b, h, t, d)
    assert torch.equal(out, expected.transpose(1, 2))


def test_flash_attention_style_packing():
    q, k, v = qkv()
    cu = torch.tensor([0, 4, 5, 9], dtype=torch.int32)
    out, _ = make_attention_function("naive")(Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert torch.equal(out, naive(q, k, v, seq_lens=[4, 1, 4]).transpose(1, 2))
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k must be equal"):
        make_attention_function("naive")(Layer(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu.flip(0))
    causal = torch.ones(1, 1, 9, 9, dtype=torch.bool).tril()  # (1, 1, t, t): one sequence, not three
    with pytest.raises(ValueError, match=r"cu_seq_lens packs \[4, 1, 4\] but the attention mask packs differently"):
        make_attention_function("naive")(Layer(), q, k, v, causal, cu_seq_lens_q=cu, cu_seq_lens_k=cu)


def test_queries_that_see_no_key_output_zeros():
    # Item 0: query 4 (a padding token inside the sequence) sees nothing; the others see their causal keys.
    # Item 1: nothing at all. Every other row equals naive's (exactly: the same computation).
    q, k, v = qkv(b=2)
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()  # (b, 1, t, t)
    mask[0, 0, 4] = False
    mask[1] = False
    out, _ = make_attention_function("naive")(Layer(), q, k, v, mask)  # (b, t, h, d)
    assert torch.equal(out[0, 4], torch.zeros_like(out[0, 4])) and torch.equal(out[1], torch.zeros_like(out[1]))
    expected = naive(q, k, v).transpose(1, 2)  # (b, t, h, d)
    assert torch.equal(out[0, :4], expected[0, :4]) and torch.equal(out[0, 5:], expected[0, 5:])


def test_bidirectional_layers():
    q, k, v = qkv()
    layer = Layer()
    layer.is_causal = False
    out, _ = make_attention_function("naive")(layer, q, k, v, None)
    assert torch.equal(out, naive(q, k, v, causal=False).transpose(1, 2))


def test_a_backend_that_cannot_run_here_says_why(monkeypatch):
    monkeypatch.setattr(Backend, "unavailable_reason", lambda self: "needs the missing package(s): triton")
    with pytest.raises(ValueError, match="the attnlab naive backend cannot run here: it needs the missing package"):
        make_attention_function("naive")(Layer(), *qkv(), None)
