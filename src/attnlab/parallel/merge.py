"""Merging partial attention results on the log-sum-exp: the heart of ring attention.

Attention of a query over the keys ``A ∪ B`` is a weighted mix of its attention over ``A`` and over ``B``.
With ``lse_A = log sum_{j in A} e^{s_j}`` and ``out_A = sum_{j in A} e^{s_j - lse_A} v_j``:

    lse = log(e^{lse_A} + e^{lse_B})          (torch.logaddexp)
    out = e^{lse_A - lse} out_A + e^{lse_B - lse} out_B

The weights ``e^{lse_X - lse}`` are each part's share of the softmax mass. A row that saw no key in a part
has ``lse_X = -inf``, weight 0; a row that saw no key anywhere keeps ``lse = -inf`` and a zero output (the
weights are computed against a finite stand-in for its ``lse``, so no ``-inf - -inf = nan`` appears).

Backward of ``out = sum_X w_X out_X``, ``lse = log sum_X e^{lse_X}`` with ``w_X = e^{lse_X - lse}``:

    d out_X = w_X * d out
    d lse_X = w_X * (d lse + <d out, out_X - out>)
"""

from __future__ import annotations

import torch

__all__ = ["merge_into", "part_grads", "share"]


def share(lse_part: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``e^{lse_part - lse}`` (b, h, t): the part's share of each row's softmax mass, 0 for rows without keys."""
    anchor = torch.where(torch.isneginf(lse), 0.0, lse)  # (b, h, t): rows without any key get weight e^-inf = 0
    return torch.exp(lse_part - anchor)


def merge_into(out: torch.Tensor, lse: torch.Tensor, out_part: torch.Tensor, lse_part: torch.Tensor) -> None:
    """Merge one part, in place: ``out`` (b, h, t, d) and ``lse`` (b, h, t) become the result over both."""
    merged = torch.logaddexp(lse, lse_part)  # (b, h, t)
    out.copy_(share(lse, merged).unsqueeze(-1) * out + share(lse_part, merged).unsqueeze(-1) * out_part)
    lse.copy_(merged)


def part_grads(
    dout: torch.Tensor,
    dlse: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    out_part: torch.Tensor,
    lse_part: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d out_part, d lse_part)`` from the gradients of the merged ``out`` (b, h, t, d) and ``lse`` (b, h, t)."""
    weight = share(lse_part, lse)  # (b, h, t)
    dout_part = weight.unsqueeze(-1) * dout  # (b, h, t, d)
    dlse_part = weight * (dlse + (dout * (out_part - out)).sum(dim=-1))  # (b, h, t)
    return dout_part, dlse_part
