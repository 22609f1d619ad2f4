"""Check, before a run, that its output directory can be written: so a long run does not end in a
traceback when it finally writes (an existing file where the directory should be, a read-only parent)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_dir"]


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else the closest ancestor that does (what ``mkdir -p`` would create in)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_dir(directory: str | Path, filenames: Iterable[str] = ()) -> Path:
    """Return ``directory`` as a ``Path``, or raise ``ValueError`` saying why it cannot be used.

    It must be an existing writable directory, or creatable (its closest existing ancestor a writable
    directory); each of ``filenames`` that already exists in it must be a writable regular file. Nothing is
    created.
    """
    if not str(directory).strip():
        raise ValueError("the output directory is an empty string; name a directory")
    path = Path(directory)
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"output directory {str(path)!r} exists and is not a directory")
        existing = _nearest_existing(path)
        if not existing.is_dir():
            raise ValueError(f"cannot create output directory {str(path)!r}: {str(existing)!r} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write output directory {str(path)!r}: {str(existing)!r} is not writable")
        for name in filenames:
            target = path / name
            if target.exists() and (not target.is_file() or not os.access(target, os.W_OK)):
                raise ValueError(f"cannot write {str(target)!r}: it exists and is not a writable file")
    except OSError as error:  # e.g. a name too long for the file system
        raise ValueError(f"cannot use output directory {str(path)!r}: {error.strerror or error}") from None
    return path
