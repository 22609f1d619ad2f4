"""Weight-only quantization through torchao: logits stay close to float32, int8 weights hold ~4x fewer bytes."""

import sys

import pytest
import torch
from torch import nn

from attnlab.gpt import GPTConfig, GPTModel
from attnlab.quantize import MODES, quantize_weights, tensor_bytes, weight_bytes

TINY = GPTConfig(vocab_size=96, context_length=64, d_model=64, n_layers=2, n_heads=4, dropout=0.0)


def _tiny_model(attn_impl: str = "sdpa") -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(TINY, attn_impl=attn_impl).eval()


def _linear_weight_bytes(model: nn.Module) -> int:
    # a tied head's weight is the embedding's until quantized: count each tensor once
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}
    return sum(tensor_bytes(w) for w in weights.values())


@pytest.mark.parametrize(("mode", "attn_impl"), [("int8", "sdpa"), ("int8", "ch03"), ("int8_dynamic", "sdpa")])
def test_int8_logits_close_to_float32(mode, attn_impl):
    model = _tiny_model(attn_impl)
    idx = torch.randint(0, TINY.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))  # (b, t)
    with torch.no_grad():
        reference = model(idx)  # (b, t, vocab)
        quantize_weights(model, mode)
        quantized = model(idx)  # (b, t, vocab)
    error = ((quantized - reference).abs().max() / reference.abs().max()).item()
    # Per-channel int8 rounds each weight by at most half a step, 1/254 of its row's largest |weight|
    # (0.4 %); the errors have random signs, so after the ~5 matmuls in series (qkv, out, two feed-forward
    # layers per block, the head) the logits move by a few tenths of a percent of their largest magnitude
    # (0.4 % measured). int8_dynamic also rounds each token's activations to 1/254 of their largest value,
    # about doubling that (0.5 to 0.7 % measured over seeds). 2 % leaves room for other CPUs' rounding yet
    # fails a wrong scale (a 2x error in a scale moves the logits by tens of percent) or a misplaced weight.
    assert error < 2e-2
    assert error > 0  # the weights really were replaced: float32 would give exactly the same logits


@pytest.mark.parametrize("mode", ["int8", "int8_dynamic"])
def test_int8_greedy_generation_runs(mode):
    model = quantize_weights(_tiny_model(), mode)
    prompt = torch.randint(0, TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))  # (b, t)
    with torch.no_grad():
        out = model.generate(prompt, 6)  # (b, t + 6)
    assert out.shape == (2, 11)
    assert torch.equal(out[:, :5], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < TINY.vocab_size


@pytest.mark.parametrize("mode", ["int8", "int8_dynamic"])
def test_int8_linear_weights_about_four_times_smaller(mode):
    model = _tiny_model()
    before_linear, before_all = _linear_weight_bytes(model), weight_bytes(model)
    quantize_weights(model, mode)
    after_linear = _linear_weight_bytes(model)
    # int8 holds 1 byte per weight plus a float32 scale (and an int8 zero point) per output row: the ratio is
    # 4 * in / (in + 5) = 3.71 for in_features 64. Above 4 is impossible for 1-byte weights; under 3.5 means
    # more per-row overhead than a scale and a zero point, or a float copy kept somewhere.
    assert 3.5 < before_linear / after_linear <= 4.0
    # The whole model: every linear weight now quantized; the tied head's float matrix stays, as the
    # embedding table (counted once before, as both). weight_bytes sees the quantized tensors' real storage.
    embedding = tensor_bytes(model.tok_emb.weight)
    assert weight_bytes(model) == before_all - (before_linear - embedding) + after_linear
    assert weight_bytes(model) < before_all / 2


def test_weight_bytes_counts_a_tied_weight_once():
    model = _tiny_model()
    assert model.out_head.weight is model.tok_emb.weight
    assert weight_bytes(model) == 4 * sum(p.numel() for p in model.parameters())


def test_unknown_mode_is_refused_before_any_change():
    model = _tiny_model()
    before = weight_bytes(model)
    with pytest.raises(ValueError, match=r"unknown quantization mode 'int3'; choose from int8, int8_dynamic, int4"):
        quantize_weights(model, "int3")
    assert weight_bytes(model) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_int4_off_cuda_names_mode_and_device():
    with pytest.raises(ValueError, match=r"mode 'int4' is not supported on device 'cpu'"):
        quantize_weights(_tiny_model(), "int4")


def test_no_linear_layer_is_refused():
    with pytest.raises(ValueError, match=r"no nn\.Linear layer"):
        quantize_weights(nn.Sequential(nn.ReLU()), "int8")


def test_missing_torchao_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import now fails as if not installed
    with pytest.raises(ModuleNotFoundError, match="needs the package 'torchao'"):
        quantize_weights(_tiny_model(), "int8")


def test_modes_listed():
    assert MODES == ("int8", "int8_dynamic", "int4")
