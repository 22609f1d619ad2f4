"""``loss.png``: the training loss (and the evaluation accuracy, if any) against the step.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global backend state.
matplotlib is optional (the ``plots`` extra): :func:`can_plot` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["PLOT_NAME", "can_plot", "plot_loss"]

PLOT_NAME = "loss.png"


def can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Plot the ``loss`` of every record, and ``accuracy`` where present, against ``step``; save as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in records], [r["loss"] for r in records], color="tab:blue", label="training loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.set_title(title)
    evaluated = [r for r in records if "accuracy" in r]
    if evaluated:
        right = axes.twinx()
        right.plot([r["step"] for r in evaluated], [r["accuracy"] for r in evaluated], "o-", color="tab:orange")
        right.set_ylabel("held-out accuracy", color="tab:orange")
        right.set_ylim(0.0, 1.0)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
