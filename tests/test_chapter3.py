"""Book parity: each chapter-3 step reproduces the numbers printed in the book (4 decimals).

Values come from the book's printed outputs. The book prints 4 decimals, so comparisons with its numbers use
an absolute 1e-4: the printed rounding is absolute (half a unit in the last printed place, 5e-5), and float32
noise on these O(1) values (~1e-7) is far below it. Comparisons between two computations of the same
quantity are relative to its largest value instead (:func:`rel_err`).
"""

import pytest
import torch

from attnlab import chapter3
from attnlab.chapter3 import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    attention_scores_for_query,
    context_vector_for_query,
    example_inputs,
    softmax_naive,
    weight_free_attention,
)

BOOK_ATOL = 1e-4  # the book's 4 printed decimals (see the module docstring)


def close(actual, expected):
    return torch.allclose(actual, torch.tensor(expected), atol=BOOK_ATOL, rtol=0)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture
def inputs():
    return example_inputs()


@pytest.fixture
def batch(inputs):
    return torch.stack((inputs, inputs), dim=0)  # (2, 6, 3)


def test_example_sentence_has_six_tokens(inputs):
    assert chapter3.EXAMPLE_TOKENS == ("Your", "journey", "starts", "with", "one", "step")
    assert inputs.shape == (6, 3)


def test_weight_free_attention_for_journey(inputs):
    attn_scores_2 = attention_scores_for_query(inputs, 1)
    assert close(attn_scores_2, [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])
    # Normalising by the sum (the book's first attempt) and by softmax.
    assert close(attn_scores_2 / attn_scores_2.sum(), [0.1455, 0.2278, 0.2249, 0.1285, 0.1077, 0.1656])
    attn_weights_2 = softmax_naive(attn_scores_2)
    assert close(attn_weights_2, [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581])
    # exp/sum against torch's max-subtracted softmax: measured 1.3e-7 relative (2 ulp); 1e-5 leaves headroom.
    assert rel_err(attn_weights_2, torch.softmax(attn_scores_2, dim=0)) <= 1e-5
    assert close(context_vector_for_query(inputs, attn_weights_2), [0.4419, 0.6515, 0.5683])


def test_weight_free_attention_for_all_queries(inputs):
    attn_scores, attn_weights, context_vecs = weight_free_attention(inputs)
    assert attn_scores.shape == attn_weights.shape == (6, 6)
    assert close(attn_scores[1], [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])
    # Each row sums to 1 up to float32 rounding of 6 terms (measured 1 ulp, 1.2e-7).
    assert rel_err(attn_weights.sum(dim=-1), torch.ones(6)) <= 1e-6
    assert close(context_vecs[0], [0.4421, 0.5931, 0.5790])
    assert close(context_vecs[-1], [0.4177, 0.6503, 0.5645])
    # The for-loop version of one query agrees with the matrix version.
    # Same sums in another order: measured 4.6e-8 relative; 1e-6 is 20x that.
    assert rel_err(context_vector_for_query(inputs, attn_weights[1]), context_vecs[1]) <= 1e-6


def test_softmax_naive_overflows_where_torch_softmax_does_not():
    big = torch.tensor([1000.0, 0.0])
    assert torch.isnan(softmax_naive(big)).any()
    # exp(0) / (exp(0) + exp(-1000)) is exactly 1 and exp(-1000) underflows to exactly 0 in float32.
    assert torch.equal(torch.softmax(big, dim=0), torch.tensor([1.0, 0.0]))


def test_trainable_weights_v1(inputs):
    torch.manual_seed(123)
    sa_v1 = SelfAttentionV1(d_in=3, d_out=2)
    query_2 = inputs[1] @ sa_v1.W_query
    assert close(query_2, [0.4306, 1.4551])
    keys = inputs @ sa_v1.W_key
    assert close(query_2.dot(keys[1]), 1.8524)
    out = sa_v1(inputs)
    assert out.shape == (6, 2)
    assert close(out[0], [0.2996, 0.8053])
    assert close(out[1], [0.3061, 0.8210])  # the book's context_vec_2


def test_trainable_weights_v2(inputs):
    torch.manual_seed(789)
    sa_v2 = SelfAttentionV2(d_in=3, d_out=2)
    out = sa_v2(inputs)
    assert close(out[0], [-0.0739, 0.0713])


def test_v1_equals_v2_with_transposed_weights(inputs):
    torch.manual_seed(789)
    sa_v2 = SelfAttentionV2(3, 2)
    sa_v1 = SelfAttentionV1(3, 2)
    with torch.no_grad():
        sa_v1.W_query.copy_(sa_v2.W_query.weight.T)
        sa_v1.W_key.copy_(sa_v2.W_key.weight.T)
        sa_v1.W_value.copy_(sa_v2.W_value.weight.T)
    # x @ W.T versus x @ W_transposed: measured 1e-7 relative; 1e-6 is 10x that.
    assert rel_err(sa_v1(inputs), sa_v2(inputs)) <= 1e-6


def test_causal_attention_class(batch):
    torch.manual_seed(123)
    ca = CausalAttention(d_in=3, d_out=2, context_length=6, dropout=0.0)
    context_vecs = ca(batch)
    assert context_vecs.shape == (2, 6, 2)
    assert close(context_vecs[0, 0], [-0.4519, 0.2216])
    assert close(context_vecs[0, -1], [-0.5299, -0.1081])
    assert torch.equal(context_vecs[0], context_vecs[1])


def test_causal_attention_ignores_the_future(batch):
    torch.manual_seed(123)
    ca = CausalAttention(3, 2, context_length=6, dropout=0.0)
    changed = batch.clone()
    changed[:, 4:] += 1.0  # alter only the last two tokens
    # The first four rows see only unchanged tokens (measured: identical); the last two change by 0.84 relative.
    assert rel_err(ca(changed)[:, :4], ca(batch)[:, :4]) <= 1e-6
    assert rel_err(ca(changed)[:, 4:], ca(batch)[:, 4:]) > 1e-2


def test_dropout_demo():
    torch.manual_seed(123)
    dropped = torch.nn.Dropout(0.5)(torch.ones(6, 6))
    assert torch.equal(dropped[0], torch.tensor([2.0, 2.0, 0.0, 2.0, 2.0, 0.0]))


def test_multi_head_wrapper(batch):
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2)
    context_vecs = mha(batch)
    assert context_vecs.shape == (2, 6, 4)  # num_heads * d_out, as in the book
    assert close(context_vecs[0, 0], [-0.4519, 0.2216, 0.4772, 0.1063])
    assert close(context_vecs[0, -1], [-0.5299, -0.1081, 0.5077, 0.3493])


def test_multi_head_attention(batch):
    torch.manual_seed(123)
    mha = MultiHeadAttention(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2)
    context_vecs = mha(batch)
    assert context_vecs.shape == (2, 6, 2)
    assert close(context_vecs[0, 0], [0.3190, 0.4858])
    assert close(context_vecs[0, -1], [0.2575, 0.4028])


def test_multi_head_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match="d_out 5 must be divisible by num_heads 2"):
        MultiHeadAttention(3, 5, 6, 0.0, num_heads=2)
