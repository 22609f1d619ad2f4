"""Argument types shared by the subcommands (argparse ``type=`` callables: syntax only, no library logic)."""

from __future__ import annotations

__all__ = ["comma_list"]


def comma_list(text: str) -> tuple[str, ...]:
    """``"sdpa, ch03"`` -> ``("sdpa", "ch03")``; blanks dropped, so ``""`` gives ``()`` (which the library
    refuses as an empty selection, naming it)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
