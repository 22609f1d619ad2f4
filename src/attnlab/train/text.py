"""Next-token prediction on a user's text file: the whole file as one stream of token ids, random windows of it.

Tokens are the file's bytes (ids 0..255) or, with a ``tokenizer.json`` (the ``tokenizers`` package), that
tokenizer's ids. A batch is ``batch_size`` windows of ``seq_len + 1`` tokens at random offsets; the inputs are
the first ``seq_len`` tokens of each, the targets the last ``seq_len``. The offsets depend only on
``(seed, step)`` (see :func:`.mqar.batch_generator`), so a resumed run or another rank reads the same windows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .mqar import batch_generator

__all__ = ["BYTE_VOCAB", "TextData", "load_text"]

BYTE_VOCAB = 256


class TextData:
    """A token stream ``ids`` (1-D int64) over ``vocab_size`` ids, cut into training windows."""

    def __init__(self, ids: torch.Tensor, vocab_size: int, seq_len: int) -> None:
        if ids.numel() < seq_len + 1:
            raise ValueError(
                f"the text has {ids.numel()} tokens; training windows of seq_len {seq_len} need at least "
                f"{seq_len + 1}: use a longer file or a smaller seq_len"
            )
        self.ids = ids  # (n,)
        self.vocab_size = vocab_size
        self.seq_len = seq_len

    def batch(self, batch_size: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step``: inputs and targets, both (batch_size, seq_len) int64."""
        starts = torch.randint(0, self.ids.numel() - self.seq_len, (batch_size,), generator=batch_generator(seed, step))
        windows = self.ids[starts[:, None] + torch.arange(self.seq_len + 1)]  # (b, seq_len + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    if not data:
        raise ValueError(f"{what} {str(path)!r} is empty")
    return data


def load_text(text_file: Path, seq_len: int, tokenizer: Path | None = None) -> TextData:
    """The file's tokens: its bytes, or the ids of ``tokenizer`` (a tokenizer.json) on its UTF-8 text."""
    data = _read(text_file, "text file")
    if tokenizer is None:
        return TextData(torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), BYTE_VOCAB, seq_len)
    spec = _read(tokenizer, "tokenizer file").decode("utf-8", errors="replace")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError("a tokenizer.json needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        loaded = Tokenizer.from_str(spec)
    except Exception as error:  # tokenizers raises its own exception type on a malformed file
        raise ValueError(f"tokenizer file {str(tokenizer)!r} is not a valid tokenizer.json: {error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"text file {str(text_file)!r} is not UTF-8 (needed with a tokenizer): {error}") from None
    ids = torch.tensor(loaded.encode(text).ids, dtype=torch.long)  # (n,)
    return TextData(ids, loaded.get_vocab_size(), seq_len)
