"""The modern options on a materialised score matrix, for the attention cores written out in this package.

``ch03`` and ``einsum`` compute the whole ``(t_q, t_k)`` score matrix themselves, so a sliding window, a
softcap and attention sinks are each a line or two on it (semantics: :mod:`attnlab.backends.spec`):

- a **window** of ``w`` keys hides every key ``j <= p_i - w`` (positions aligned bottom-right, so in a
  KV-cache step the window counts back from the query's absolute position);
- the **softcap** ``c`` squashes the scaled scores smoothly into ``(-c, c)``: ``c * tanh(s / c)``. It must
  come before the mask: ``tanh(-inf)`` is ``-1``, which would turn a hidden key into a visible one;
- a **sink** is one extra logit per head in the softmax's denominator, with no value behind it: the row's
  weights then sum to less than one, letting a head attend "nowhere".
"""

from __future__ import annotations

import torch

__all__ = ["outside_window", "softcap_scores", "softmax_with_sinks"]


def outside_window(t_q: int, t_k: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k), True where key ``j`` lies ``window`` or more positions behind query ``i``'s position."""
    query_pos = torch.arange(t_q, device=device).unsqueeze(1) + (t_k - t_q)  # (t_q, 1), aligned bottom-right
    key_pos = torch.arange(t_k, device=device).unsqueeze(0)  # (1, t_k)
    return key_pos <= query_pos - window  # (t_q, t_k)


def softcap_scores(attn_scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """``softcap * tanh(attn_scores / softcap)`` (Gemma 2's logit softcapping), same shape."""
    return softcap * torch.tanh(attn_scores / softcap)


def softmax_with_sinks(attn_scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dimension of ``attn_scores`` (..., t_k), with ``sinks`` (broadcastable to
    ``attn_scores[..., :1]``, one logit per head) joining each denominator; plain softmax when None."""
    if sinks is None:
        return torch.softmax(attn_scores, dim=-1)  # (..., t_k)
    sink_column = sinks.to(attn_scores.dtype).expand(*attn_scores.shape[:-1], 1)  # (..., 1)
    with_sink = torch.softmax(torch.cat([attn_scores, sink_column], dim=-1), dim=-1)  # (..., t_k + 1)
    return with_sink[..., :-1]  # (..., t_k): the sink's share is dropped, it has no value
