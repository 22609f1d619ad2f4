"""The tour's steps hold the book's values, and its intermediates agree with the chapter's classes.

Book values are those printed in chapter 3 of the book (printed with 4 decimals: atol 1e-4 covers half a
unit in the last place, 5e-5, plus float32 noise). Other values are derived in the test from
attnlab.chapter3's classes (checked against the book in tests/test_chapter3.py) or from plain torch.
Intermediates computed two ways agree to 1e-6 of their magnitude (float32 rounding of a handful of operations
is ~1e-7 of it on any CPU; a wrong index or mask errs by 1e-2 or more).
"""

import pytest
import torch

from attnlab.chapter3 import MultiHeadAttention, SelfAttentionV1, example_inputs
from attnlab.tour import find_step, run_tour

BOOK_ATOL = 1e-4
FLOAT_REL = 1e-6


@pytest.fixture
def steps(full_tour):
    return full_tour


def value(steps, section, key):
    return find_step(steps, section, key).value


def agree(actual, expected) -> bool:
    """Two float32 computations of one quantity: within FLOAT_REL of the expected value's magnitude."""
    actual, expected = actual.detach().double(), torch.as_tensor(expected).detach().double()
    return actual.shape == expected.shape and (actual - expected).abs().max() <= FLOAT_REL * expected.abs().max()


def close(actual, expected, atol=BOOK_ATOL):
    return torch.allclose(actual.detach(), torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_weight_free_steps_match_the_book(steps):
    assert close(value(steps, "weight-free", "attn_scores_2"), [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865])
    book_weights = [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581]
    assert close(value(steps, "weight-free", "attn_weights_2_naive"), book_weights)
    assert close(value(steps, "weight-free", "attn_weights_2"), book_weights)
    assert close(value(steps, "weight-free", "context_vec_2"), [0.4419, 0.6515, 0.5683])
    all_context_vecs = value(steps, "weight-free", "all_context_vecs")
    assert close(all_context_vecs[0], [0.4421, 0.5931, 0.5790])
    assert close(all_context_vecs[-1], [0.4177, 0.6503, 0.5645])


def test_weight_free_loops_and_matrix_products_agree(steps):
    scores = value(steps, "weight-free", "attn_scores")
    assert agree(value(steps, "weight-free", "attn_scores_loops"), scores)
    inputs = example_inputs()
    assert agree(scores, inputs @ inputs.T)
    assert agree(value(steps, "weight-free", "row_sums"), torch.ones(6))
    assert agree(value(steps, "weight-free", "attn_weights_2_tmp").sum(), torch.tensor(1.0))


def test_trainable_steps_match_the_book_and_the_class(steps):
    assert close(value(steps, "trainable", "query_2"), [0.4306, 1.4551])
    sa_v1_out = value(steps, "trainable", "sa_v1_out")
    assert close(sa_v1_out[0], [0.2996, 0.8053])
    # The step-by-step context vector of "journey" is row 2 of the class's output.
    assert agree(value(steps, "trainable", "context_vec_2"), sa_v1_out[1].detach())
    attn_scores_2 = value(steps, "trainable", "attn_scores_2")
    assert agree(value(steps, "trainable", "attn_score_22"), attn_scores_2[1])
    attn_weights = value(steps, "trainable", "attn_weights")
    assert agree(attn_weights[1], value(steps, "trainable", "attn_weights_2"))
    assert value(steps, "trainable", "keys_shape") == torch.Size([6, 2])


def test_trainable_parameters_are_the_seeded_v1_draws(steps):
    torch.manual_seed(123)
    sa_v1 = SelfAttentionV1(3, 2)
    assert torch.equal(value(steps, "trainable", "W_query").detach(), sa_v1.W_query.detach())


def test_causal_steps(steps):
    weights = value(steps, "causal", "attn_weights_causal").detach()
    # Masking with -inf before softmax equals masking after softmax and renormalising.
    assert agree(weights, value(steps, "causal", "masked_simple_norm").detach())
    assert torch.equal(value(steps, "causal", "mask_simple"), torch.tril(torch.ones(6, 6)))
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.isneginf(value(steps, "causal", "masked")[future]).all()
    assert (weights[future] == 0).all()
    assert agree(weights.sum(dim=-1), torch.ones(6))
    assert torch.equal(value(steps, "causal", "dropout_ones")[0], torch.tensor([2.0, 2.0, 0.0, 2.0, 2.0, 0.0]))
    # Dropout(0.5) keeps a weight doubled or zeroes it; the seed-123 pattern is the one on the ones.
    dropped = value(steps, "causal", "attn_weights_dropout").detach()
    keep = value(steps, "causal", "dropout_ones") != 0
    assert agree(dropped, torch.where(keep, 2 * weights, 0.0))


def test_causal_class_matches_the_book(steps):
    context_vecs = value(steps, "causal-class", "context_vecs")
    assert context_vecs.shape == (2, 6, 2)
    assert close(context_vecs[0, 0], [-0.4519, 0.2216])
    assert close(context_vecs[0, -1], [-0.5299, -0.1081])
    assert close(context_vecs[1, -1], [-0.5299, -0.1081])


def test_multi_head_wrapper_starts_with_the_causal_class_head(steps):
    context_vecs = value(steps, "multi-head-wrapper", "context_vecs")
    assert value(steps, "multi-head-wrapper", "context_vecs_shape") == torch.Size([2, 6, 4])
    # Same seed, so the wrapper's first head is the CausalAttention of 3.5.3.
    assert close(context_vecs[0, 0, :2], [-0.4519, 0.2216])
    assert close(context_vecs[0, -1, :2], [-0.5299, -0.1081])


def test_batched_matmul_equals_per_head_products(steps):
    a = value(steps, "batched-matmul", "a")
    assert a.shape == (1, 2, 3, 4)
    assert close(a[0, 0, 0], [0.2745, 0.6584, 0.2775, 0.8573], atol=0)
    batched = value(steps, "batched-matmul", "batched")
    assert agree(batched[0, 0], value(steps, "batched-matmul", "first_res"))
    assert agree(batched[0, 1], value(steps, "batched-matmul", "second_res"))
    assert agree(batched, torch.einsum("bhtd,bhsd->bhts", a, a))


def test_multi_head_output_and_captured_head_weights(steps):
    torch.manual_seed(123)
    mha = MultiHeadAttention(3, 2, 6, 0.0, num_heads=2)
    batch = torch.stack((example_inputs(), example_inputs()))  # (2, 6, 3)
    context_vecs = value(steps, "multi-head", "context_vecs")
    assert agree(context_vecs, mha(batch))
    # The hooked weights rebuild the class's output: per-head weights @ values, heads merged, out_proj.
    head_weights = value(steps, "multi-head", "head_attn_weights")  # (h, t, t)
    assert head_weights.shape == (2, 6, 6)
    values = mha.W_value(batch[0]).view(6, 2, 1).transpose(0, 1)  # (h, t, hd)
    merged = (head_weights @ values).transpose(0, 1).reshape(6, 2)  # (t, d_out)
    assert agree(mha.out_proj(merged), context_vecs[0])
    assert agree(head_weights.sum(dim=-1), torch.ones(2, 6))


def test_buffers_lesson_on_the_meta_device(steps):
    assert close(value(steps, "buffers", "without_buffer_cpu")[0, 0], [-0.4519, 0.2216])
    assert value(steps, "buffers", "without_buffer_devices").endswith("mask.device: cpu")
    assert value(steps, "buffers", "with_buffer_devices").endswith("mask.device: meta")
    assert value(steps, "buffers", "with_buffer_forward").device.type == "meta"
    dtypes = value(steps, "buffers", "dtypes").splitlines()
    assert dtypes[0].endswith("mask.dtype: torch.float32")
    assert dtypes[1].endswith("mask.dtype: torch.float64")
    assert "mask" not in value(steps, "buffers", "state_dict_without_buffer")
    assert "mask" in value(steps, "buffers", "state_dict_with_buffer")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_lesson_on_cuda_shows_the_device_mismatch():
    steps = run_tour("buffers", move_to="cuda")
    assert value(steps, "buffers", "without_buffer_forward").startswith("RuntimeError")
    assert value(steps, "buffers", "with_buffer_forward").device.type == "cuda"
