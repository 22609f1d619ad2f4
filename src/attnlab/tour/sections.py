"""The chapter's sections as tour steps, each computed live by :mod:`attnlab.chapter3`.

One function per section, in the chapter's order. Each builds what it needs itself, with the book's seeds,
so a section can run alone and still print the book's numbers. Where the book prints an intermediate
that a class keeps inside ``forward`` (queries, keys, attention weights), the step reads it from the
class's own parameters or captures it with a forward hook: the chapter's code is used, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..chapter3 import (
    CausalAttention,
    CausalAttentionWithoutBuffer,
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
from .step import Step, StepRecorder

__all__ = [
    "SECTIONS",
    "Section",
    "batched_matmul",
    "buffers",
    "causal",
    "causal_class",
    "multi_head",
    "multi_head_wrapper",
    "trainable",
    "weight_free",
]

D_IN, D_OUT = 3, 2  # the chapter's widths: 3-dimensional embeddings projected to 2
CONTEXT_LENGTH = 6  # the example sentence's six tokens

# The book's batched-matmul example, (b, num_heads, num_tokens, head_dim) = (1, 2, 3, 4).
# fmt: off
BOOK_HEADS_EXAMPLE = [[[[0.2745, 0.6584, 0.2775, 0.8573],
                        [0.8993, 0.0390, 0.9268, 0.7388],
                        [0.7179, 0.7058, 0.9156, 0.4340]],

                       [[0.0772, 0.3565, 0.1479, 0.5331],
                        [0.4066, 0.2318, 0.4545, 0.9737],
                        [0.4606, 0.5159, 0.4220, 0.5786]]]]
# fmt: on


def _example_batch() -> torch.Tensor:
    inputs = example_inputs()  # (6, 3)
    return torch.stack((inputs, inputs), dim=0)  # (2, 6, 3)


def weight_free(move_to: str) -> list[Step]:
    """3.3: attention scores, weights and context vectors without trainable weights."""
    rec = StepRecorder("weight-free")
    inputs = rec.add(
        "inputs",
        'The sentence "Your journey starts with one step": one 3-dimensional embedding per token.',
        "inputs = example_inputs()",
        example_inputs(),  # (6, 3)
    )
    attn_scores_2 = rec.add(
        "attn_scores_2",
        'Attention scores of the query "journey" (x^2): its dot product with every token.',
        "attn_scores_2 = attention_scores_for_query(inputs, query_index=1)",
        attention_scores_for_query(inputs, 1),  # (6,)
    )
    attn_weights_2_tmp = rec.add(
        "attn_weights_2_tmp",
        "A first normalisation: divide by the sum ...",
        "attn_weights_2_tmp = attn_scores_2 / attn_scores_2.sum()",
        attn_scores_2 / attn_scores_2.sum(),  # (6,)
    )
    rec.add(
        "attn_weights_2_tmp_sum",
        "... so that the weights add up to 1.",
        "attn_weights_2_tmp.sum()",
        attn_weights_2_tmp.sum(),
    )
    rec.add(
        "attn_weights_2_naive",
        "Softmax instead: exp(x) / sum(exp(x)) keeps weights positive and favours the largest scores.",
        "attn_weights_2_naive = softmax_naive(attn_scores_2)",
        softmax_naive(attn_scores_2),  # (6,)
    )
    attn_weights_2 = rec.add(
        "attn_weights_2",
        "PyTorch's softmax gives the same weights, and does not overflow (it subtracts the maximum first).",
        "attn_weights_2 = torch.softmax(attn_scores_2, dim=0)",
        torch.softmax(attn_scores_2, dim=0),  # (6,)
    )
    rec.add(
        "context_vec_2",
        'The context vector of "journey": the inputs summed, each weighted by its attention weight.',
        "context_vec_2 = context_vector_for_query(inputs, attn_weights_2)",
        context_vector_for_query(inputs, attn_weights_2),  # (3,)
    )
    rec.add(
        "attn_scores_loops",
        "All attention scores, one query at a time with the for-loop function: one row per query.",
        "attn_scores = torch.stack([attention_scores_for_query(inputs, i) for i in range(6)])",
        torch.stack([attention_scores_for_query(inputs, i) for i in range(len(inputs))]),  # (6, 6)
    )
    attn_scores, attn_weights, all_context_vecs = weight_free_attention(inputs)  # (6, 6), (6, 6), (6, 3)
    code = "attn_scores, attn_weights, all_context_vecs = weight_free_attention(inputs)"
    rec.add("attn_scores", "The same scores with one matrix product, inputs @ inputs.T.", code, attn_scores)
    rec.add(
        "attn_weights",
        "Softmax along each row: row i holds query i's attention weights.",
        "attn_weights",
        attn_weights,
    )
    rec.add("row_sums", "Every row sums to 1.", "attn_weights.sum(dim=-1)", attn_weights.sum(dim=-1))
    rec.add(
        "all_context_vecs",
        "All context vectors at once, attn_weights @ inputs; row 2 is context_vec_2 again.",
        "all_context_vecs",
        all_context_vecs,
    )
    return rec.steps


def trainable(move_to: str) -> list[Step]:
    """3.4: query, key and value matrices, scaled dot products, and the two self-attention classes."""
    rec = StepRecorder("trainable")
    inputs = example_inputs()  # (6, 3)
    torch.manual_seed(123)
    sa_v1 = SelfAttentionV1(D_IN, D_OUT)
    rec.add(
        "W_query",
        "torch.manual_seed(123), then three torch.rand(3, 2) matrices (query, key, value): the book's draws.",
        "torch.manual_seed(123); sa_v1 = SelfAttentionV1(d_in=3, d_out=2); sa_v1.W_query",
        sa_v1.W_query,
    )
    # The book's step-by-step matrices have requires_grad=False; no_grad prints the same (no grad_fn).
    with torch.no_grad():
        x_2 = inputs[1]  # (3,) the query token "journey"
        query_2 = rec.add(
            "query_2",
            'The query vector of "journey": x_2 projected by W_query.',
            "x_2 = inputs[1]; query_2 = x_2 @ sa_v1.W_query",
            x_2 @ sa_v1.W_query,  # (2,)
        )
        keys = inputs @ sa_v1.W_key  # (6, 2)
        values = inputs @ sa_v1.W_value  # (6, 2)
        rec.add(
            "keys_shape",
            "Keys (and values) for all six tokens, projected from 3 to 2 dimensions.",
            "keys = inputs @ sa_v1.W_key; values = inputs @ sa_v1.W_value; keys.shape",
            keys.shape,
        )
        rec.add(
            "attn_score_22",
            'The score of "journey" against itself: query_2 · key_2.',
            "attn_score_22 = query_2.dot(keys[1])",
            query_2.dot(keys[1]),
        )
        attn_scores_2 = rec.add(
            "attn_scores_2",
            'All scores of "journey" with one matrix product.',
            "attn_scores_2 = query_2 @ keys.T",
            query_2 @ keys.T,  # (6,)
        )
        d_k = keys.shape[-1]
        attn_weights_2 = rec.add(
            "attn_weights_2",
            "Scaled by sqrt(d_k) before softmax, so that softmax stays smooth as the width grows.",
            "d_k = keys.shape[-1]; attn_weights_2 = torch.softmax(attn_scores_2 / d_k**0.5, dim=-1)",
            torch.softmax(attn_scores_2 / d_k**0.5, dim=-1),  # (6,)
        )
        rec.add(
            "context_vec_2",
            'The context vector of "journey": its weights applied to the values.',
            "context_vec_2 = attn_weights_2 @ values",
            attn_weights_2 @ values,
        )
        queries = inputs @ sa_v1.W_query  # (6, 2)
        rec.add(
            "attn_weights",
            "The same for every query at once (row 2 is attn_weights_2): what SelfAttentionV1 computes.",
            "attn_weights = torch.softmax((inputs @ sa_v1.W_query) @ keys.T / d_k**0.5, dim=-1)",
            torch.softmax(queries @ keys.T / d_k**0.5, dim=-1),  # (6, 6)
        )
    rec.add(
        "sa_v1_out",
        "SelfAttentionV1 does all of this in forward: one context vector per token (row 2 is context_vec_2).",
        "sa_v1(inputs)",
        sa_v1(inputs),  # (6, 2)
    )
    torch.manual_seed(789)
    sa_v2 = SelfAttentionV2(D_IN, D_OUT)
    rec.add(
        "sa_v2_out",
        "SelfAttentionV2 uses nn.Linear (a better initialisation), so its numbers differ.",
        "torch.manual_seed(789); sa_v2 = SelfAttentionV2(d_in=3, d_out=2); sa_v2(inputs)",
        sa_v2(inputs),  # (6, 2)
    )
    return rec.steps


def causal(move_to: str) -> list[Step]:
    """3.5.1-3.5.2: hiding future tokens with a mask, and dropout on the attention weights."""
    rec = StepRecorder("causal")
    inputs = example_inputs()  # (6, 3)
    torch.manual_seed(789)
    sa_v2 = SelfAttentionV2(D_IN, D_OUT)
    queries = sa_v2.W_query(inputs)  # (6, 2)
    keys = sa_v2.W_key(inputs)  # (6, 2)
    attn_scores = queries @ keys.T  # (6, 6)
    attn_weights = rec.add(
        "attn_weights",
        "The attention weights of the seed-789 SelfAttentionV2: every token still sees the future.",
        "queries = sa_v2.W_query(inputs); keys = sa_v2.W_key(inputs); attn_scores = queries @ keys.T\n"
        "attn_weights = torch.softmax(attn_scores / keys.shape[-1]**0.5, dim=-1)",
        torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1),  # (6, 6)
    )
    context_length = attn_scores.shape[0]
    mask_simple = rec.add(
        "mask_simple",
        "A lower-triangular mask: 1 where a query may look (itself and earlier tokens), 0 for the future.",
        "mask_simple = torch.tril(torch.ones(context_length, context_length))",
        torch.tril(torch.ones(context_length, context_length)),  # (6, 6)
    )
    masked_simple = rec.add(
        "masked_simple",
        "Masking after softmax zeroes the future ...",
        "masked_simple = attn_weights * mask_simple",
        attn_weights * mask_simple,
    )
    rec.add(
        "masked_simple_norm",
        "... but the rows no longer sum to 1, so they are divided by their sums.",
        "masked_simple_norm = masked_simple / masked_simple.sum(dim=-1, keepdim=True)",
        masked_simple / masked_simple.sum(dim=-1, keepdim=True),  # (6, 6)
    )
    mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)  # (6, 6) 1 = future
    masked = rec.add(
        "masked",
        "Shorter: set the future scores to -inf before softmax (1 above the diagonal marks the future).",
        "mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)\n"
        "masked = attn_scores.masked_fill(mask.bool(), -torch.inf)",
        attn_scores.masked_fill(mask.bool(), -torch.inf),  # (6, 6)
    )
    attn_weights = rec.add(
        "attn_weights_causal",
        "exp(-inf) = 0: softmax gives the same weights as masking and renormalising, in one step.",
        "attn_weights = torch.softmax(masked / keys.shape[-1]**0.5, dim=1)",
        torch.softmax(masked / keys.shape[-1] ** 0.5, dim=1),  # (6, 6)
    )
    torch.manual_seed(123)
    dropout = torch.nn.Dropout(0.5)
    rec.add(
        "dropout_ones",
        "Dropout(0.5) zeroes about half of the entries and scales the rest by 1 / (1 - 0.5) = 2.",
        "torch.manual_seed(123); dropout = torch.nn.Dropout(0.5); dropout(torch.ones(6, 6))",
        dropout(torch.ones(6, 6)),  # (6, 6)
    )
    torch.manual_seed(123)
    rec.add(
        "attn_weights_dropout",
        "Dropout on the causal attention weights (training only; it is off in eval mode).",
        "torch.manual_seed(123); dropout(attn_weights)",
        dropout(attn_weights),  # (6, 6)
    )
    return rec.steps


def causal_class(move_to: str) -> list[Step]:
    """3.5.3: the compact CausalAttention class on a batch of two sequences."""
    rec = StepRecorder("causal-class")
    batch = _example_batch()  # (2, 6, 3)
    rec.add(
        "batch_shape",
        "A batch: two copies of the sentence, 6 tokens of 3 dimensions each.",
        "batch = torch.stack((inputs, inputs), dim=0); batch.shape",
        batch.shape,
    )
    torch.manual_seed(123)
    ca = CausalAttention(D_IN, D_OUT, context_length=CONTEXT_LENGTH, dropout=0.0)
    context_vecs = rec.add(
        "context_vecs",
        "CausalAttention masks with -inf inside forward; batched matrix products handle both sequences.",
        "torch.manual_seed(123); ca = CausalAttention(d_in=3, d_out=2, context_length=6, dropout=0.0)\n"
        "context_vecs = ca(batch)",
        ca(batch),  # (2, 6, 2)
    )
    rec.add(
        "context_vecs_shape",
        "One 2-dimensional context vector per token, for both sequences.",
        "context_vecs.shape",
        context_vecs.shape,
    )
    return rec.steps


def multi_head_wrapper(move_to: str) -> list[Step]:
    """3.6.1: several causal heads run one after the other, outputs concatenated."""
    rec = StepRecorder("multi-head-wrapper")
    torch.manual_seed(123)
    mha = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads=2)
    context_vecs = rec.add(
        "context_vecs",
        "Two CausalAttention heads side by side: the first two columns are the head from 3.5.3.",
        "torch.manual_seed(123)\n"
        "mha = MultiHeadAttentionWrapper(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2)\n"
        "context_vecs = mha(batch)",
        mha(_example_batch()),  # (2, 6, 4)
    )
    rec.add(
        "context_vecs_shape",
        "num_heads * d_out = 4 features per token.",
        "context_vecs.shape",
        context_vecs.shape,
    )
    return rec.steps


def batched_matmul(move_to: str) -> list[Step]:
    """3.6.2: a matrix product over the last two dimensions computes every head at once."""
    rec = StepRecorder("batched-matmul")
    a = rec.add(
        "a",
        "A (b, num_heads, num_tokens, head_dim) = (1, 2, 3, 4) tensor, like the queries split into heads.",
        "a = torch.tensor([[[[0.2745, 0.6584, 0.2775, 0.8573], ...]]])",
        torch.tensor(BOOK_HEADS_EXAMPLE),  # (1, 2, 3, 4)
    )
    rec.add(
        "batched",
        "One batched product: (1, 2, 3, 4) @ (1, 2, 4, 3) -> (1, 2, 3, 3), one matrix per head.",
        "a @ a.transpose(2, 3)",
        a @ a.transpose(2, 3),
    )
    first_head = a[0, 0, :, :]  # (3, 4)
    rec.add(
        "first_res",
        "The same, head by head: the first head ...",
        "first_head = a[0, 0, :, :]; first_head @ first_head.T",
        first_head @ first_head.T,
    )
    second_head = a[0, 1, :, :]  # (3, 4)
    rec.add(
        "second_res",
        "... and the second head give the two matrices above.",
        "second_head = a[0, 1, :, :]; second_head @ second_head.T",
        second_head @ second_head.T,
    )
    return rec.steps


def multi_head(move_to: str) -> list[Step]:
    """3.6.2: multi-head attention with one projection split into heads."""
    rec = StepRecorder("multi-head")
    torch.manual_seed(123)
    mha = MultiHeadAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0, num_heads=2)
    captured: list[torch.Tensor] = []
    # forward passes the attention weights through self.dropout: a hook there reads them as computed.
    hook = mha.dropout.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    try:
        context_vecs = mha(_example_batch())  # (2, 6, 2)
    finally:
        hook.remove()
    rec.add(
        "context_vecs",
        "One projection of width d_out = 2, split into 2 heads of 1 dimension, combined by out_proj.",
        "torch.manual_seed(123)\n"
        "mha = MultiHeadAttention(d_in=3, d_out=2, context_length=6, dropout=0.0, num_heads=2)\n"
        "context_vecs = mha(batch)",
        context_vecs,
    )
    rec.add(
        "context_vecs_shape",
        "d_out = 2 features per token, whatever the number of heads.",
        "context_vecs.shape",
        context_vecs.shape,
    )
    rec.add(
        "head_attn_weights",
        "Each head's causal attention weights for the first sequence, shape (num_heads, 6, 6).",
        "attn_weights[0]  # read from mha.dropout's input with a forward hook",
        captured[0][0],  # (h, t, t)
    )
    return rec.steps


def _devices(module: CausalAttention) -> str:
    return f"W_query.weight.device: {module.W_query.weight.device}\nmask.device: {module.mask.device}"


def buffers(move_to: str) -> list[Step]:
    """Bonus: why the causal mask is a registered buffer (it moves with the module, it is saved)."""
    rec = StepRecorder("buffers")
    batch = _example_batch()  # (2, 6, 3)
    torch.manual_seed(123)
    ca_without_buffer = CausalAttentionWithoutBuffer(D_IN, D_OUT, CONTEXT_LENGTH, 0.0)
    with torch.no_grad():
        rec.add(
            "without_buffer_cpu",
            "The mask as a plain tensor attribute works on the CPU: the numbers of 3.5.3.",
            "torch.manual_seed(123); ca_without_buffer = CausalAttentionWithoutBuffer(3, 2, 6, 0.0)\n"
            "with torch.no_grad(): ca_without_buffer(batch)",
            ca_without_buffer(batch),  # (2, 6, 2)
        )
    ca_without_buffer.to(move_to)
    rec.add(
        "without_buffer_devices",
        f"Moving the module to {move_to!r} moves its parameters, but the plain mask stays behind.",
        f'ca_without_buffer.to("{move_to}")\nca_without_buffer.W_query.weight.device; ca_without_buffer.mask.device',
        _devices(ca_without_buffer),
    )
    if move_to == "meta":
        note = "meta runs no kernels, so nothing fails here; on a GPU this forward fails with a device mismatch."
    else:
        note = "So the forward pass fails: the mask and the scores are on different devices."
    try:
        with torch.no_grad():
            outcome: object = ca_without_buffer(batch.to(move_to))  # (2, 6, 2)
    except RuntimeError as error:  # the lesson: a device mismatch between the scores and the mask
        outcome = f"{type(error).__name__}: {error}"
    rec.add("without_buffer_forward", note, f'ca_without_buffer(batch.to("{move_to}"))', outcome)

    torch.manual_seed(123)
    ca_with_buffer = CausalAttention(D_IN, D_OUT, CONTEXT_LENGTH, 0.0).to(move_to)
    rec.add(
        "with_buffer_devices",
        "With register_buffer the mask moves with the module ...",
        f'torch.manual_seed(123); ca_with_buffer = CausalAttention(3, 2, 6, 0.0).to("{move_to}")\n'
        "ca_with_buffer.W_query.weight.device; ca_with_buffer.mask.device",
        _devices(ca_with_buffer),
    )
    with torch.no_grad():
        rec.add(
            "with_buffer_forward",
            "... and the forward pass runs there.",
            f'ca_with_buffer(batch.to("{move_to}"))',
            ca_with_buffer(batch.to(move_to)),
        )

    ca_without_buffer.double()
    ca_with_buffer.double()
    rec.add(
        "dtypes",
        "A dtype change is a move too: .double() converts parameters and buffers, not plain attributes.",
        "ca_without_buffer.double(); ca_with_buffer.double()  # then the dtypes of W_query.weight and mask",
        f"without buffer: W_query.weight.dtype: {ca_without_buffer.W_query.weight.dtype}, "
        f"mask.dtype: {ca_without_buffer.mask.dtype}\n"
        f"with buffer:    W_query.weight.dtype: {ca_with_buffer.W_query.weight.dtype}, "
        f"mask.dtype: {ca_with_buffer.mask.dtype}",
    )
    rec.add(
        "state_dict_without_buffer",
        "state_dict holds parameters and buffers: the plain mask is not in it, so it is not saved ...",
        "list(ca_without_buffer.state_dict())",
        list(ca_without_buffer.state_dict()),
    )
    rec.add(
        "state_dict_with_buffer",
        "... while the registered buffer is saved and loaded with the weights.",
        "list(ca_with_buffer.state_dict())",
        list(ca_with_buffer.state_dict()),
    )
    return rec.steps


@dataclass(frozen=True)
class Section:
    """A tour section: its command-line name, a title naming the book's section, and its steps."""

    name: str
    title: str
    steps: Callable[[str], list[Step]]  # called with the device the buffers lesson moves modules to


#: The sections in the chapter's order, by name.
SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (
        Section("weight-free", "3.3 Self-attention without trainable weights", weight_free),
        Section("trainable", "3.4 Self-attention with trainable weights", trainable),
        Section("causal", "3.5.1-3.5.2 Causal attention mask and dropout", causal),
        Section("causal-class", "3.5.3 A compact causal attention class", causal_class),
        Section("multi-head-wrapper", "3.6.1 Stacking single-head attention layers", multi_head_wrapper),
        Section("batched-matmul", "3.6.2 Batched matrix products over heads", batched_matmul),
        Section("multi-head", "3.6.2 Multi-head attention with weight splits", multi_head),
        Section("buffers", "Bonus: why the mask is a registered buffer", buffers),
    )
}
