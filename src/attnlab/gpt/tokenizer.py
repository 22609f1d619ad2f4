"""A checkpoint directory's ``tokenizer.json`` (the ``tokenizers`` package), with clear errors.

The file comes with the checkpoint and may be damaged: :func:`load_tokenizer` turns whatever the
``tokenizers`` package raises into a one-line ``ValueError`` naming the file, and :func:`encode_prompt`
refuses a prompt that is not text (e.g. undecodable bytes from a command line) or encodes to nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .files import MAX_JSON_BYTES, file_size, is_file, one_line, require_package

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["TOKENIZER_FILE", "encode_prompt", "load_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of ``directory/tokenizer.json``; ``ValueError`` if it is absent or unreadable."""
    path = Path(directory) / TOKENIZER_FILE
    if not is_file(path):
        raise ValueError(f"{path} does not exist; a text prompt needs it (or give token ids instead)")
    if (size := file_size(path)) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size:,} bytes, more than the {MAX_JSON_BYTES:,} a tokenizer may have")
    require_package("tokenizers", f"reading {TOKENIZER_FILE}")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ValueError(f"{path} is not a readable tokenizer: {one_line(error)}") from error


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """The token ids of ``text``; ``ValueError`` if it is not valid text or encodes to no tokens."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes smuggled in through the command line
        raise ValueError(f"the prompt {one_line(ascii(text), 80)} is not valid UTF-8 text") from None
    try:
        ids = tokenizer.encode(text).ids
    except Exception as error:  # the tokenizer's own failure, in its own exception type
        raise ValueError(f"the tokenizer cannot encode the prompt: {one_line(error)}") from error
    if not ids:
        raise ValueError(f"the prompt {one_line(repr(text), 80)} encodes to no tokens")
    return ids
