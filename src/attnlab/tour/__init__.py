"""``attnlab tour``: chapter 3 as a runnable walk-through, every step computed by :mod:`attnlab.chapter3`.

>>> from attnlab.tour import run_tour
>>> [step.text for step in run_tour("causal-class") if step.key == "context_vecs_shape"]
['torch.Size([2, 6, 2])']
"""

from .runner import TourConfig, check_plots_dir, default_move_to, find_step, run_tour, write_plots
from .sections import SECTIONS, Section
from .step import Step

__all__ = [
    "SECTIONS",
    "Section",
    "Step",
    "TourConfig",
    "check_plots_dir",
    "default_move_to",
    "find_step",
    "run_tour",
    "write_plots",
]
