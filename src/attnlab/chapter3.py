"""Chapter 3 of *Build a Large Language Model (From Scratch)*, step by step.

Read this file beside the book. Each function and class is one step of the chapter, written the way the
book writes it, and creates its parameters in the book's order, so that after the same
``torch.manual_seed`` it prints the book's numbers (the tests check this).

The steps:

1. weight-free self-attention: :func:`attention_scores_for_query`, :func:`softmax_naive`,
   :func:`context_vector_for_query` for one query; :func:`weight_free_attention` for all of them;
2. trainable weights: :class:`SelfAttentionV1` (``nn.Parameter``), :class:`SelfAttentionV2` (``nn.Linear``);
3. causal attention with dropout: :class:`CausalAttention`;
4. multi-head attention: :class:`MultiHeadAttentionWrapper` (stacked heads) and
   :class:`MultiHeadAttention` (one projection split into heads, batched matrix products).

The multi-head implementations compared by the rest of attnlab live in :mod:`attnlab.implementations`;
these classes keep the book's exact signatures (for example the wrapper's output width is
``num_heads * d_out``), which is why they are kept apart.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "EXAMPLE_TOKENS",
    "CausalAttention",
    "CausalAttentionWithoutBuffer",
    "MultiHeadAttention",
    "MultiHeadAttentionWrapper",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "attention_scores_for_query",
    "context_vector_for_query",
    "example_inputs",
    "softmax_naive",
    "weight_free_attention",
]

#: The chapter's example sentence, one token per word.
EXAMPLE_TOKENS: tuple[str, ...] = ("Your", "journey", "starts", "with", "one", "step")

_EXAMPLE_EMBEDDINGS = [
    [0.43, 0.15, 0.89],  # Your     (x^1)
    [0.55, 0.87, 0.66],  # journey  (x^2)
    [0.57, 0.85, 0.64],  # starts   (x^3)
    [0.22, 0.58, 0.33],  # with     (x^4)
    [0.77, 0.25, 0.10],  # one      (x^5)
    [0.05, 0.80, 0.55],  # step     (x^6)
]


def example_inputs() -> torch.Tensor:
    """The six 3-dimensional token embeddings of "Your journey starts with one step"; shape (6, 3)."""
    return torch.tensor(_EXAMPLE_EMBEDDINGS)


# ---------------------------------------------------------------------------------------------------------
# 3.3.1  Weight-free self-attention
# ---------------------------------------------------------------------------------------------------------


def softmax_naive(x: torch.Tensor) -> torch.Tensor:
    """Softmax along dim 0 exactly as written first in the book: exp(x) / sum(exp(x)).

    It overflows for large inputs; ``torch.softmax`` subtracts the maximum first and should be preferred.
    """
    return torch.exp(x) / torch.exp(x).sum(dim=0)


def attention_scores_for_query(inputs: torch.Tensor, query_index: int) -> torch.Tensor:
    """Attention scores of one query against every token: dot products, shape (num_tokens,)."""
    query = inputs[query_index]  # (d_in,)
    attn_scores = torch.empty(inputs.shape[0])  # (num_tokens,)
    for i, x_i in enumerate(inputs):
        attn_scores[i] = torch.dot(x_i, query)
    return attn_scores


def context_vector_for_query(inputs: torch.Tensor, attn_weights: torch.Tensor) -> torch.Tensor:
    """The context vector of one query: the inputs summed, each weighted by its attention weight."""
    context_vec = torch.zeros(inputs.shape[1])  # (d_in,)
    for i, x_i in enumerate(inputs):
        context_vec += attn_weights[i] * x_i
    return context_vec


def weight_free_attention(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight-free self-attention for all queries at once, with matrix products.

    Returns ``(attn_scores, attn_weights, context_vecs)``: the (t, t) dot products, their row-wise
    softmax, and the (t, d_in) context vectors.
    """
    attn_scores = inputs @ inputs.T  # (t, t)
    attn_weights = torch.softmax(attn_scores, dim=-1)  # (t, t), each row sums to 1
    context_vecs = attn_weights @ inputs  # (t, d_in)
    return attn_scores, attn_weights, context_vecs


# ---------------------------------------------------------------------------------------------------------
# 3.4  Self-attention with trainable weights
# ---------------------------------------------------------------------------------------------------------


class SelfAttentionV1(nn.Module):
    """Self-attention with trainable query, key and value matrices as plain ``nn.Parameter``.

    The matrices are (d_in, d_out) and drawn with ``torch.rand``, in the order query, key, value.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = x @ self.W_key  # (t, d_out)
        queries = x @ self.W_query  # (t, d_out)
        values = x @ self.W_value  # (t, d_out)
        attn_scores = queries @ keys.T  # (t, t)
        # Scaling by sqrt(d_k) keeps the scores' spread independent of the width, so softmax stays smooth.
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (t, t)
        context_vec = attn_weights @ values  # (t, d_out)
        return context_vec


class SelfAttentionV2(nn.Module):
    """Self-attention with ``nn.Linear`` projections (better initialisation, optional bias)."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.W_key(x)  # (t, d_out)
        queries = self.W_query(x)  # (t, d_out)
        values = self.W_value(x)  # (t, d_out)
        attn_scores = queries @ keys.T  # (t, t)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (t, t)
        context_vec = attn_weights @ values  # (t, d_out)
        return context_vec


# ---------------------------------------------------------------------------------------------------------
# 3.5  Causal attention with dropout
# ---------------------------------------------------------------------------------------------------------


class CausalAttention(nn.Module):
    """Single-head causal self-attention on a batch, with dropout on the attention weights.

    The mask is a *registered buffer*: it is not trained, but it moves with the module
    (``.to(device)``, ``.double()``) and is saved in ``state_dict``, unlike a plain tensor attribute
    (compare :class:`CausalAttentionWithoutBuffer`).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False) -> None:
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # 1 above the diagonal marks the future tokens that a query may not see.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape  # (b, t, d_in)
        keys = self.W_key(x)  # (b, t, d_out)
        queries = self.W_query(x)  # (b, t, d_out)
        values = self.W_value(x)  # (b, t, d_out)

        attn_scores = queries @ keys.transpose(1, 2)  # (b, t, t)
        # -inf before softmax gives exactly zero weight to future tokens, and the remaining weights of
        # each row still sum to one (masking after softmax would need a second normalisation).
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, t, t)
        attn_weights = self.dropout(attn_weights)

        context_vec = attn_weights @ values  # (b, t, d_out)
        return context_vec


class CausalAttentionWithoutBuffer(CausalAttention):
    """The same causal attention with the mask as a plain tensor attribute: the mistake buffers fix.

    ``module.to("cuda")`` moves the parameters but leaves this mask behind on the CPU, so the forward
    pass fails with a device mismatch; and the mask is missing from ``state_dict``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False) -> None:
        super().__init__(d_in, d_out, context_length, dropout, qkv_bias)
        mask = self.mask
        del self.mask  # drop the registered buffer ...
        self.mask = mask  # ... and keep the same tensor as a plain attribute


# ---------------------------------------------------------------------------------------------------------
# 3.6  Multi-head attention
# ---------------------------------------------------------------------------------------------------------


class MultiHeadAttentionWrapper(nn.Module):
    """Several :class:`CausalAttention` heads run one after another, outputs concatenated.

    As in the book, each head has width ``d_out``, so the output has ``num_heads * d_out`` features.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (b, t, num_heads * d_out)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one projection per q/k/v, split into heads, and batched matrix products.

    ``d_out`` is the total width; each head gets ``d_out // num_heads`` features.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out {d_out} must be divisible by num_heads {num_heads}")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape  # (b, t, d_in)
        keys = self.W_key(x)  # (b, t, d_out)
        queries = self.W_query(x)  # (b, t, d_out)
        values = self.W_value(x)  # (b, t, d_out)

        # Split the last dimension into heads, then bring heads forward: one matmul serves all heads.
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, t, hd)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, t, hd)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, t, hd)

        attn_scores = queries @ keys.transpose(2, 3)  # (b, h, t, t)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]  # (t, t)
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, h, t, t)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)  # (b, t, h, hd)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)  # (b, t, d_out)
        return self.out_proj(context_vec)  # (b, t, d_out)
