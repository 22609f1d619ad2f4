"""Transformers' attention masks, turned into attnlab's visibility rules (or refused).

An attnlab backend takes no arbitrary mask: it knows causal attention, a sliding window and packed sequences
(``AttentionSpec``). Transformers describes visibility with a mask built once per forward by the function
registered for the ``attn_implementation`` in its ``AttentionMaskInterface``. attnlab registers
:func:`attnlab_mask` there, which returns

- ``None`` when the mask is the plain pattern: no padding, the queries being the last keys (bottom-right, as
  attnlab aligns them), and nothing but causal (or bidirectional) attention. The backend's own causal masking
  does the work and no ``t_q x t_k`` tensor is built; the layer's ``sliding_window`` becomes the spec's window.
- otherwise transformers' boolean mask ``(b, 1, t_q, t_k)`` (True = may attend), as its ``sdpa`` would get it,
  with the rows of padding queries cleared (their outputs mean nothing in transformers either). Sliding-window
  masks, padding, packed sequences (found by transformers from ``position_ids``), static caches and chunked
  attention take this path.

:func:`plan_masked_call` then expresses such a mask exactly, per batch item: it drops the keys no query sees and
the queries that see no key (padding, empty cache slots), derives packed sequences from the block structure
when the remaining queries and keys are the same tokens, and checks that the backend's own rule equals the mask
on every query that sees a key. A mask that no rule reproduces (an arbitrary float bias, bidirectional blocks
inside causal text, padding in the middle of a cached sequence) is refused with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch

from ..backends.common import visible_mask
from ..backends.spec import AttentionSpec

__all__ = ["ItemPlan", "attnlab_mask", "mask_to_visible", "plan_masked_call"]


@dataclass(frozen=True)
class ItemPlan:
    """How one batch item's masked attention runs: queries ``[q_start, q_end)`` on keys ``[k_start, k_end)``.

    ``seq_lens`` packs the sliced tokens (only when the slices have equal lengths), None for no packing. An
    item whose queries see no key at all has ``q_start == q_end`` (its output is zeros).
    """

    q_start: int
    q_end: int
    k_start: int
    k_end: int
    seq_lens: tuple[int, ...] | None


def attnlab_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    allow_is_causal_skip: bool = False,
    allow_is_bidirectional_skip: bool = False,
    local_size: int | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The mask function attnlab registers with transformers' ``AttentionMaskInterface`` (see the module doc).

    Transformers calls it with the keywords of its own ``sdpa_mask``; ``allow_is_causal_skip`` (or
    ``allow_is_bidirectional_skip``) is True exactly when the pattern is plain causal (bidirectional) attention,
    without packed sequences or custom overlays. ``local_size`` marks sliding-window and chunked masks.
    """
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    q_offset = int(q_offset)  # a static cache hands it over as a tensor
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)  # (b, kv_offset + kv_length) or None
    no_padding = padding is None or bool(padding[:, kv_offset : kv_offset + kv_length].all())
    bottom_right = q_offset + q_length == kv_offset + kv_length  # the last query is the last key
    plain = allow_is_causal_skip or allow_is_bidirectional_skip
    if no_padding and bottom_right and plain and local_size is None:
        return None
    mask = sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=causal_mask_function if mask_function is None else mask_function,
        attention_mask=attention_mask,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False,
        **kwargs,
    )  # (b, 1, q_length, kv_length) bool, True = may attend
    if padding is not None:  # a padding query's output is meaningless: it sees nothing here
        query_is_token = padding[:, q_offset : q_offset + q_length].to(mask.device)  # (b, q_length)
        mask = mask & query_is_token[:, None, :, None]  # (b, 1, q_length, kv_length)
    return mask


def mask_to_visible(mask: torch.Tensor, t_q: int, t_k: int) -> torch.Tensor:
    """A 4-D transformers mask as boolean ``(b, t_q, t_k)``; refuses what is not pure visibility."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"attnlab's attention takes a boolean or 0/-inf tensor mask, got a {type(mask).__name__} (is the mask "
            "function attnlab registers in use? call attnlab.hf.register())"
        )
    if mask.dim() != 4 or mask.shape[-2:] != (t_q, t_k):
        raise ValueError(
            f"attnlab's attention expects a 4-D mask (batch, 1, {t_q}, {t_k}), got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        visible = mask
    elif mask.is_floating_point():  # additive: 0 where visible, -inf or the dtype's minimum elsewhere
        visible = mask > torch.finfo(mask.dtype).min / 2  # (b, heads, t_q, t_k)
        if bool((mask[visible] != 0).any()):
            raise ValueError(
                "attnlab's attention cannot add an arbitrary bias to the scores: the float mask holds values other "
                "than 0 and -inf (use attnlab's alibi_slopes through a backend directly, or another implementation)"
            )
    else:
        raise ValueError(f"attnlab's attention takes a boolean or floating mask, got {mask.dtype}")
    if visible.shape[1] != 1 and not bool((visible == visible[:, :1]).all()):
        raise ValueError("attnlab's attention takes one mask for all heads; this mask differs between heads")
    return visible[:, 0]  # (b, t_q, t_k)


def _span(flags: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1-D bool tensor (which has at least one)."""
    where = flags.nonzero().flatten()  # (n,)
    return int(where[0]), int(where[-1]) + 1


def _packed_lengths(visible: torch.Tensor, has_key: torch.Tensor) -> tuple[int, ...]:
    """Sequence lengths read off a square mask: token i starts a sequence unless it sees token i - 1.

    (t, t) ``visible``, (t,) ``has_key``; a token that sees nothing forms its own sequence of one.
    """
    t = visible.shape[0]
    continues = torch.zeros(t, dtype=torch.bool, device=visible.device)  # (t,)
    if t > 1:
        continues[1:] = visible.diagonal(offset=-1) & has_key[1:] & has_key[:-1]
    starts = [*(~continues).nonzero().flatten().tolist(), t]
    return tuple(end - start for start, end in pairwise(starts))


def _plan_item(visible: torch.Tensor, spec: AttentionSpec) -> ItemPlan:
    """One batch item's (t_q, t_k) visibility as slices and packing under ``spec``'s rule, or ValueError."""
    has_key = visible.any(dim=1)  # (t_q,)
    if not bool(has_key.any()):
        return ItemPlan(0, 0, 0, 0, None)
    q_start, q_end = _span(has_key)
    k_start, k_end = _span(visible.any(dim=0))
    sliced = visible[q_start:q_end, k_start:k_end]  # (t_q', t_k')
    rows = has_key[q_start:q_end]  # (t_q',): the rows whose visibility matters
    t_q, t_k = sliced.shape
    candidates: list[tuple[int, ...] | None] = [None]
    if t_q == t_k:
        candidates.append(_packed_lengths(sliced, rows))
    for seq_lens in candidates:
        rule = AttentionSpec(causal=spec.causal, window=spec.window, seq_lens=seq_lens)
        if torch.equal(visible_mask(t_q, t_k, rule, sliced.device)[rows], sliced[rows]):
            packed = seq_lens if seq_lens is not None and len(seq_lens) > 1 else None
            return ItemPlan(q_start, q_end, k_start, k_end, packed)
    rule = f"causal={spec.causal}, window={spec.window}"
    raise ValueError(
        f"attnlab's attention cannot express this attention mask with its rule ({rule}): after dropping the keys "
        f"no query sees and the queries that see no key ({t_q} queries x {t_k} keys left), neither that rule nor "
        "packed sequences reproduce it (padding inside a cached sequence, or a custom mask); use another "
        "attn_implementation for such inputs"
    )


def plan_masked_call(
    mask: torch.Tensor, spec: AttentionSpec, t_q: int, t_k: int
) -> tuple[list[ItemPlan], torch.Tensor]:
    """One :class:`ItemPlan` per batch item for a transformers mask, under ``spec``'s causal/window rule, and
    which queries see some key (b, t_q): the others output zeros."""
    visible = mask_to_visible(mask, t_q, t_k)  # (b, t_q, t_k)
    return [_plan_item(item, spec) for item in visible], visible.any(dim=-1)
