"""Run the tour: the steps of one section or of all, and the heatmaps drawn from them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import resolve_device
from ..outputs import check_output_dir
from .sections import SECTIONS
from .step import Step

__all__ = ["TourConfig", "check_plots_dir", "default_move_to", "find_step", "run_tour", "write_plots"]

#: Device types the buffers lesson can move its modules to (``meta`` needs no hardware).
MOVE_TO_TYPES = ("meta", "cuda", "mps")


def default_move_to() -> str:
    """Where the buffers lesson moves its modules: CUDA or MPS when present, else the ``meta`` device."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "meta"


@dataclass(frozen=True)
class TourConfig:
    """What to run. ``section=None`` runs every section; ``move_to=None`` picks :func:`default_move_to`."""

    section: str | None = None
    move_to: str | None = None

    def __post_init__(self) -> None:
        if self.section is not None and self.section not in SECTIONS:
            raise ValueError(f"unknown section {self.section!r}; valid sections: {', '.join(SECTIONS)}")
        if self.move_to is not None:
            try:
                device_type = torch.device(self.move_to).type
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"move_to {self.move_to!r} is not a torch device; choose from {', '.join(MOVE_TO_TYPES)}"
                ) from None
            if device_type == "cpu":
                raise ValueError(f"move_to {self.move_to!r}: the buffers lesson needs a device other than cpu")
            if device_type not in MOVE_TO_TYPES:
                raise ValueError(f"move_to {self.move_to!r} is not supported; choose from {', '.join(MOVE_TO_TYPES)}")
            if device_type != "meta":
                try:
                    resolve_device(self.move_to)  # absent CUDA or MPS, or no such CUDA index
                except ValueError:
                    raise ValueError(
                        f"move_to {self.move_to!r}: no such device on this machine (torch {torch.__version__}); "
                        "use meta, which needs no hardware"
                    ) from None

    @property
    def section_names(self) -> list[str]:
        return list(SECTIONS) if self.section is None else [self.section]


def run_tour(section: str | None = None, *, move_to: str | None = None) -> list[Step]:
    """The steps of ``section`` (all sections, in the chapter's order, when None), computed live.

    The book's ``torch.manual_seed`` calls run inside :func:`torch.random.fork_rng`, so the caller's
    random state is unchanged afterwards.
    """
    config = TourConfig(section=section, move_to=move_to)
    target = config.move_to or default_move_to()
    steps: list[Step] = []
    for name in config.section_names:
        with torch.random.fork_rng():
            steps.extend(SECTIONS[name].steps(target))
    return steps


def find_step(steps: list[Step], section: str, key: str) -> Step:
    """The step named ``key`` in ``section``; a clear error if the tour has none."""
    for step in steps:
        if step.section == section and step.key == key:
            return step
    raise KeyError(f"no step {key!r} in section {section!r}")


def check_plots_dir(directory: str | Path) -> Path:
    """Raise ``ValueError`` unless :func:`write_plots` can work: matplotlib installed, ``directory``
    writable (call it before the tour, so a bad path is refused before any work)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("plots need matplotlib, which is not installed (pip install 'attnlab[plots]')")
    from .plots import PLOTS  # matplotlib is optional: import it only when plotting

    return check_output_dir(directory, [plot.filename for plot in PLOTS])


def write_plots(directory: str | Path, steps: list[Step] | None = None) -> list[Path]:
    """Write the heatmaps as PNG files into ``directory`` and return their paths.

    ``steps`` are the tour's steps (by default the whole tour); a heatmap is drawn when the steps of its
    section are among them, so the steps of one section give that section's heatmaps only.
    Needs matplotlib (the ``plots`` extra).
    """
    directory = check_plots_dir(directory)
    from .plots import PLOTS, save_heatmaps  # matplotlib is optional: import it only when plotting

    steps = run_tour() if steps is None else steps
    directory.mkdir(parents=True, exist_ok=True)
    sections = {step.section for step in steps}
    paths = []
    for plot in PLOTS:
        if plot.section in sections:
            panels = [
                (panel.title, panel.select(find_step(steps, plot.section, panel.key).value)) for panel in plot.panels
            ]
            paths.append(save_heatmaps(directory / plot.filename, plot.title, panels, plot.value_format))
    return paths
