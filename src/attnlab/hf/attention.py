"""One attnlab backend as a transformers attention function (what ``AttentionInterface`` calls).

Transformers calls ``fn(module, query, key, value, attention_mask, scaling=, dropout=, **kwargs)`` with q
``(b, h, t_q, d)`` and k, v ``(b, h_kv, t_k, d)`` (not repeated for GQA), and expects
``(attn_output (b, t_q, h, d), attn_weights or None)``. The keywords a model passes map onto
:class:`AttentionSpec`: ``scaling`` -> scale, ``sliding_window`` -> window (the same "w keys including the
query's own"), ``softcap`` (Gemma 2), ``s_aux`` -> sinks (gpt-oss), ``dropout`` -> dropout_p (non-zero in
training mode only), ``is_causal`` (or ``module.is_causal``) -> causal; FlashAttention-style packed inputs
(``cu_seq_lens_q``/``cu_seq_lens_k``) -> seq_lens. The mask is turned into visibility rules by
:mod:`attnlab.hf.masks`. What the backend does not do is refused by name (the registry's ``ValueError``);
``output_attentions`` is refused too, since no attnlab backend returns the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import groupby

import torch

from ..backends import BACKENDS, AttentionSpec, Backend
from .masks import ItemPlan, plan_masked_call

__all__ = ["make_attention_function"]


def _packed_lengths_from_cu(kwargs: dict, q: torch.Tensor, k: torch.Tensor) -> tuple[int, ...] | None:
    """seq_lens from FlashAttention-style ``cu_seq_lens_q``/``cu_seq_lens_k`` (cumulative starts), if given."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    if cu_q is None or cu_k is None or not torch.equal(cu_q.cpu(), cu_k.cpu()):
        raise ValueError("attnlab's attention packs self-attention only: cu_seq_lens_q and cu_seq_lens_k must be equal")
    if q.shape[0] != 1:
        raise ValueError(f"packed inputs (cu_seq_lens_q) must have batch size 1, got {q.shape[0]}")
    lengths = torch.diff(cu_q.cpu()).tolist()
    return tuple(lengths)


def _sort_key(plan: ItemPlan) -> tuple:
    """Equal plans sort next to each other (so one backend call serves them all)."""
    return (plan.q_start, plan.q_end, plan.k_start, plan.k_end, plan.seq_lens or ())


def _attend_masked(
    backend: Backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, spec: AttentionSpec
) -> torch.Tensor:
    """Run ``backend`` under a transformers mask, batch items grouped by their plan (see attnlab.hf.masks)."""
    b, t_q, t_k = q.shape[0], q.shape[2], k.shape[2]
    if mask.shape[0] == 1 and b > 1:
        mask = mask.expand(b, *mask.shape[1:])  # (b, heads, t_q, t_k)
    if mask.shape[0] != b:
        raise ValueError(f"the attention mask has batch size {mask.shape[0]}, the queries {b}")
    plans, has_key = plan_masked_call(mask, spec, t_q, t_k)  # has_key (b, t_q)
    packed = spec.seq_lens if spec.seq_lens is not None and len(spec.seq_lens) > 1 else None
    if spec.seq_lens is not None and any(plan.seq_lens != packed for plan in plans):
        raise ValueError(
            f"cu_seq_lens packs {list(spec.seq_lens)} but the attention mask packs differently; pass one of them"
        )
    if all(plan == ItemPlan(0, t_q, 0, t_k, None) for plan in plans):
        out = backend.attend(q, k, v, spec)  # (b, h, t_q, d): the mask is the backend's own rule
    else:
        out = q.new_zeros(q.shape)  # (b, h, t_q, d)
        order = sorted(range(b), key=lambda i: _sort_key(plans[i]))
        for plan, group in groupby(order, key=lambda i: plans[i]):
            items = list(group)
            if plan.q_start == plan.q_end:
                continue
            rows, keys = slice(plan.q_start, plan.q_end), slice(plan.k_start, plan.k_end)
            part = replace(spec, seq_lens=plan.seq_lens)
            out[items, :, rows] = backend.attend(q[items, :, rows], k[items, :, keys], v[items, :, keys], part)
    # Queries that see no key output zeros (the backend saw them inside a slice, or not at all).
    return out if bool(has_key.all()) else out * has_key[:, None, :, None]  # (b, h, t_q, d)


def make_attention_function(backend_name: str) -> Callable[..., tuple[torch.Tensor, None]]:
    """The transformers attention function of one attnlab backend (see the module docstring)."""
    backend = BACKENDS[backend_name]

    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        sliding_window: int | None = None,
        softcap: float | None = None,
        s_aux: torch.Tensor | None = None,
        is_causal: bool | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if kwargs.get("output_attentions"):
            raise ValueError(
                f"the attnlab {backend_name} backend returns no attention weights (output_attentions=True); "
                "use attn_implementation='eager' for them"
            )
        unavailable = backend.unavailable_reason()
        if unavailable is not None:
            raise ValueError(f"the attnlab {backend_name} backend cannot run here: it {unavailable}")
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        spec = AttentionSpec(
            causal=bool(causal),
            scale=scaling,
            window=sliding_window,
            softcap=softcap,
            sinks=s_aux,
            seq_lens=_packed_lengths_from_cu(kwargs, query, key),
            dropout_p=float(dropout),
        )
        if attention_mask is None:
            out = backend.attend(query, key, value, spec)  # (b, h, t_q, d)
        else:
            out = _attend_masked(backend, query, key, value, attention_mask, spec)  # (b, h, t_q, d)
        return out.transpose(1, 2).contiguous(), None  # (b, t_q, h, d)

    attention.__name__ = f"attnlab_{backend_name}_attention"
    attention.__qualname__ = attention.__name__
    return attention
