"""The bytes one decode step reads, checked against the sizes of the actual tensors."""

import torch
from torch import nn

from attnlab.bench.decode_bytes import mean_step_bytes, step_weight_bytes
from attnlab.gpt import GPTConfig, GPTModel
from attnlab.quantize import quantize_weights

TINY = GPTConfig(vocab_size=96, context_length=64, d_model=32, n_layers=2, n_heads=2, dropout=0.0)


def _tiny(tie: bool = True) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_embeddings": tie}), attn_impl="sdpa").eval()


def test_tied_head_reads_the_whole_table_position_table_one_row_per_token():
    model = _tiny(tie=True)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied table once
    pos = model.pos_emb.weight
    rows_read = 3 * pos.shape[1] * pos.element_size()  # 3 positions of the position table
    assert step_weight_bytes(model, batch=3) == everything - pos.numel() * pos.element_size() + rows_read


def test_untied_token_table_reads_only_batch_rows():
    model = _tiny(tie=False)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    tables = [model.tok_emb.weight, model.pos_emb.weight]
    full = sum(t.numel() * t.element_size() for t in tables)
    rows = sum(2 * t.shape[1] * t.element_size() for t in tables)
    assert step_weight_bytes(model, batch=2) == everything - full + rows


def test_quantized_weights_count_their_real_storage():
    model = _tiny(tie=False)
    before = step_weight_bytes(model, batch=1)
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    float_bytes = sum(w.numel() * 4 for w in linear)
    rows = sum(w.shape[0] for w in linear)
    quantize_weights(model, "int8")
    # int8: 1 byte per weight, plus a float32 scale and an int8 zero point per output row
    int8_bytes = sum(w.shape[0] * w.shape[1] for w in linear) + rows * (4 + 1)
    assert step_weight_bytes(model, batch=1) == before - float_bytes + int8_bytes


def test_mean_step_bytes_averages_the_attended_lengths():
    # steps after a 10-token prompt attend 11, 12, 13 positions: mean 12
    assert mean_step_bytes(1000, lambda length: 7 * length, context=10, new_tokens=3) == 1000 + 7 * 12
