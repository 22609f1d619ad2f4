"""A file of prompts for the engine: one prompt per line, read with one-line errors."""

from __future__ import annotations

from pathlib import Path

from ..gpt.files import file_size, is_file

__all__ = ["MAX_PROMPTS_FILE_BYTES", "read_prompts_file"]

#: Larger files are refused unread (a prompts file is text typed or generated for one run).
MAX_PROMPTS_FILE_BYTES = 64 * 2**20


def read_prompts_file(path: str | Path) -> list[str]:
    """The non-empty lines of ``path`` (UTF-8), each one prompt; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if not is_file(path):
        raise ValueError(f"prompts file {path} does not exist or is not a file")
    if (size := file_size(path)) > MAX_PROMPTS_FILE_BYTES:
        raise ValueError(f"prompts file {path} is {size:,} bytes, more than {MAX_PROMPTS_FILE_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompts file {path} is not UTF-8 text") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt (one per line)")
    return prompts
