"""Transformers masks as attnlab visibility rules: what is expressed (slices, packing) and what is refused."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("transformers")

from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

from attnlab.backends import AttentionSpec
from attnlab.backends.common import visible_mask
from attnlab.hf.masks import ItemPlan, attnlab_mask, mask_to_visible, plan_masked_call

CAUSAL = AttentionSpec(causal=True)


def as_4d(visible: torch.Tensor) -> torch.Tensor:
    """(t_q, t_k) -> (1, 1, t_q, t_k)."""
    return visible[None, None]


def test_plain_causal_without_padding_needs_no_mask():
    assert attnlab_mask(2, 5, 5, allow_is_causal_skip=True, attention_mask=torch.ones(2, 5, dtype=torch.bool)) is None
    # decoding: 1 query after 4 cached keys, still bottom-right
    assert attnlab_mask(2, 1, 5, q_offset=4, allow_is_causal_skip=True) is None


def test_padding_is_materialised_with_padding_queries_cleared():
    padding = torch.tensor([[False, False, True, True, True]])  # two left-padding tokens
    mask = attnlab_mask(1, 5, 5, mask_function=causal_mask_function, attention_mask=padding, allow_is_causal_skip=True)
    expected = torch.tril(torch.ones(5, 5, dtype=torch.bool)) & padding[0] & padding[0, :, None]  # (5, 5)
    assert mask.shape == (1, 1, 5, 5) and torch.equal(mask[0, 0], expected)


def test_sliding_window_masks_are_materialised():
    # A mask made for a window (local_size) may not be dropped: the layer's rule is checked against it.
    mask = attnlab_mask(1, 6, 6, mask_function=sliding_window_causal_mask_function(3), local_size=3)
    assert torch.equal(mask[0, 0], visible_mask(6, 6, AttentionSpec(causal=True, window=3)))


def test_left_padding_and_static_cache_become_slices():
    # Item 0: 2 left-padding tokens (rows and keys 0, 1 see/are seen by nothing). Item 1: a static cache of 8
    # slots of which the last 3 are empty (keys never seen), one query.
    padded = visible_mask(6, 6, CAUSAL).clone()
    padded[:2] = False
    padded[:, :2] = False
    assert plan_masked_call(as_4d(padded), CAUSAL, 6, 6)[0] == [ItemPlan(2, 6, 2, 6, None)]
    static = torch.zeros(1, 8, dtype=torch.bool)
    static[0, :5] = True
    assert plan_masked_call(as_4d(static), CAUSAL, 1, 8)[0] == [ItemPlan(0, 1, 0, 5, None)]


@pytest.mark.parametrize("window", [None, 1, 2])
def test_packed_sequences_are_read_off_the_mask(window):
    spec = AttentionSpec(causal=True, window=window)
    packed = visible_mask(9, 9, AttentionSpec(causal=True, window=window, seq_lens=[4, 1, 4]))
    (plan,), _ = plan_masked_call(as_4d(packed), spec, 9, 9)
    # window=1: every token sees only itself, which packing cannot change: no seq_lens needed
    assert plan == ItemPlan(0, 9, 0, 9, None if window == 1 else (4, 1, 4))


def test_chunked_attention_is_packing():
    chunked = visible_mask(6, 6, CAUSAL) & (torch.arange(6)[:, None] // 3 == torch.arange(6)[None, :] // 3)
    assert plan_masked_call(as_4d(chunked), CAUSAL, 6, 6)[0] == [ItemPlan(0, 6, 0, 6, (3, 3))]


def test_a_mask_no_rule_reproduces_is_refused():
    # Bidirectional attention inside a block of causal text (image tokens): not causal, not packed.
    mixed = visible_mask(6, 6, CAUSAL).clone()
    mixed[1, 2] = True
    message = "cannot express this attention mask with its rule (causal=True, window=None)"
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_masked_call(as_4d(mixed), CAUSAL, 6, 6)


def test_additive_masks():
    visible = visible_mask(4, 4, CAUSAL)
    additive = torch.zeros(1, 1, 4, 4).masked_fill(~visible, float("-inf"))
    assert torch.equal(mask_to_visible(additive, 4, 4)[0], visible)
    minimum = torch.zeros(1, 1, 4, 4).masked_fill(~visible, torch.finfo(torch.float32).min)
    assert torch.equal(mask_to_visible(minimum, 4, 4)[0], visible)
    with pytest.raises(ValueError, match="cannot add an arbitrary bias to the scores"):
        mask_to_visible(additive - 0.5, 4, 4)


def test_masks_that_are_not_visibility_are_refused():
    with pytest.raises(ValueError, match=re.escape("expects a 4-D mask (batch, 1, 4, 4), got shape (1, 4)")):
        mask_to_visible(torch.ones(1, 4, dtype=torch.bool), 4, 4)
    per_head = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    per_head[0, 1, 0, 0] = False
    with pytest.raises(ValueError, match="one mask for all heads"):
        mask_to_visible(per_head, 4, 4)
    with pytest.raises(ValueError, match="got a list"):
        mask_to_visible([[True]], 1, 1)
