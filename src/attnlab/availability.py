"""Whether the optional packages that an implementation or backend needs are installed here."""

from __future__ import annotations

import importlib.util

__all__ = ["missing_packages_reason"]


def missing_packages_reason(requires: tuple[str, ...]) -> str | None:
    """A sentence naming the packages of ``requires`` that cannot be imported here, or None if all can."""
    missing = [name for name in requires if importlib.util.find_spec(name) is None]
    return f"needs the missing package(s): {', '.join(missing)}" if missing else None
