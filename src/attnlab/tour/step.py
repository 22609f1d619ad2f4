"""One step of the tour: a one-line explanation, the code that ran, and the value it printed.

Values are formatted the way the book prints them: ``repr`` under PyTorch's default print options
(4 decimals), set only for the duration of the formatting so that the caller's options are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch

__all__ = ["Step", "StepRecorder", "book_print_options", "format_value"]

T = TypeVar("T")


@contextlib.contextmanager
def book_print_options() -> Iterator[None]:
    """PyTorch's default print options (the book's: 4 decimals, 80 columns), restored afterwards."""
    # torch has no public getter for its print options; this private context manager saves and restores them.
    with torch._tensor_str.printoptions(profile="default", sci_mode=None):
        yield


def format_value(value: object) -> str:
    """A string as is; anything else (tensor, ``torch.Size``, list of keys ...) as the book prints it."""
    if isinstance(value, str):
        return value
    with book_print_options():
        return repr(value)


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is elementwise, not a bool
class Step:
    """A printed step. ``key`` names it uniquely within its section (tests and plots look steps up by it)."""

    section: str
    key: str
    explanation: str
    code: str
    value: object

    @property
    def text(self) -> str:
        return format_value(self.value)


@dataclass
class StepRecorder:
    """Collects the steps of one section; :meth:`add` returns the value so that a step reads like code."""

    section: str
    steps: list[Step] = field(default_factory=list)

    def add(self, key: str, explanation: str, code: str, value: T) -> T:
        if any(step.key == key for step in self.steps):
            raise ValueError(f"step key {key!r} is used twice in section {self.section!r}")
        self.steps.append(Step(self.section, key, explanation, code, value))
        return value
