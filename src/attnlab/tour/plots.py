"""Heatmaps of the tour's attention weights and masks, with the example sentence's tokens as axis labels.

Drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot, no global backend or figure state) and
saved as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ..chapter3 import EXAMPLE_TOKENS

__all__ = ["PLOTS", "Panel", "Plot", "save_heatmaps"]


@dataclass(frozen=True)
class Panel:
    """One heatmap: the tour step ``key`` (``head``: one slice of its first dimension), titled ``title``."""

    key: str
    title: str
    head: int | None = None

    def select(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.head is None else value[self.head]  # (t, t)


@dataclass(frozen=True)
class Plot:
    """A PNG file: panels side by side, all from the steps of one tour section."""

    filename: str
    title: str  # one line per 4 inches of figure (one panel): break longer titles with "\n"
    section: str
    panels: tuple[Panel, ...]
    value_format: str = "{:.2f}"  # how each cell is annotated


#: The tour's heatmaps, in the chapter's order.
PLOTS: tuple[Plot, ...] = (
    Plot(
        "weight_free_attn_weights.png",
        "3.3 Weight-free attention weights\nsoftmax(inputs @ inputs.T)",
        "weight-free",
        (Panel("attn_weights", ""),),
    ),
    Plot(
        "trainable_attn_weights.png",
        "3.4 Attention weights with trainable weights\n(SelfAttentionV1, seed 123)",
        "trainable",
        (Panel("attn_weights", ""),),
    ),
    Plot(
        "causal_mask.png",
        "3.5.1 Causal mask, torch.tril(torch.ones(6, 6))\n1 = may attend, 0 = future",
        "causal",
        (Panel("mask_simple", ""),),
        value_format="{:.0f}",
    ),
    Plot(
        "causal_dropout.png",
        "3.5 Causal attention weights (SelfAttentionV2, seed 789) before and after dropout",
        "causal",
        (
            Panel("attn_weights_causal", "masked with -inf, softmax"),
            Panel("attn_weights_dropout", "Dropout(0.5), seed 123: zeroed or doubled"),
        ),
    ),
    Plot(
        "multi_head_attn_weights.png",
        "3.6.2 MultiHeadAttention (seed 123): each head's causal attention weights",
        "multi-head",
        (Panel("head_attn_weights", "head 1", head=0), Panel("head_attn_weights", "head 2", head=1)),
    ),
)


def save_heatmaps(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, torch.Tensor]],
    value_format: str = "{:.2f}",
    tokens: Sequence[str] = EXAMPLE_TOKENS,
) -> Path:
    """Draw ``panels`` ((title, (t, t) tensor) pairs) side by side, queries as rows, and save a PNG."""
    matrices = [values.detach().to("cpu", torch.float32) for _, values in panels]  # each (t, t)
    for matrix in matrices:
        if matrix.shape != (len(tokens), len(tokens)):
            raise ValueError(f"heatmap of shape {tuple(matrix.shape)} does not match {len(tokens)} tokens")
    width = 0.6 + 4.4 * len(panels)  # inches
    fig = Figure(figsize=(width, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_title, _), matrix in zip(axes, panels, matrices, strict=True):
        # Colours span 0 .. this panel's maximum (its colour bar says which): weights spread over six
        # tokens stay near 1/6 and would look uniform on a 0 .. 1 scale.
        vmax = matrix.max().item()
        image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right")
        ax.set_yticks(range(len(tokens)), tokens)
        ax.set_xlabel("key (token attended to)")
        ax.set_ylabel("query")
        ax.set_title(panel_title, fontsize=10)
        for (row, col), value in _cells(matrix):
            color = "white" if value < 0.6 * vmax else "black"  # readable on viridis' dark and light ends
            ax.text(col, row, value_format.format(value), ha="center", va="center", fontsize=8, color=color)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=90, metadata={"Software": None})  # no version stamp: reruns give the same bytes
    return path


def _cells(matrix: torch.Tensor) -> list[tuple[tuple[int, int], float]]:
    return [((row, col), matrix[row, col].item()) for row in range(matrix.shape[0]) for col in range(matrix.shape[1])]
