"""Text data: bytes or tokenizer ids, windows from (seed, step), and one clear error for a bad file."""

from __future__ import annotations

import pytest
import torch
from train_cases import losses, tiny_config

from attnlab.train import load_text, train


def test_bytes_become_windows_with_shifted_targets(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 2)
    data = load_text(path, seq_len=8)
    assert data.vocab_size == 256
    x, y = data.batch(4, seed=0, step=3)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])  # the target is the next token
    assert torch.equal((y - x) % 256, torch.ones_like(x))  # this file counts up byte by byte
    again, _ = data.batch(4, seed=0, step=3)
    other, _ = data.batch(4, seed=0, step=4)
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_tokenizer_ids(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("a b c d " * 10)
    data = load_text(tmp_path / "t.txt", seq_len=4, tokenizer=tmp_path / "tokenizer.json")
    assert data.vocab_size == 4
    assert data.ids[:4].tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read text file"), (b"", "is empty"), (b"abc", "the text has 3 tokens")],
)
def test_bad_files_fail_with_one_clear_error(tmp_path, content, match):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        train(tiny_config(task="text", vocab_size=16, text_file=path))


def test_a_text_run_learns(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    train(tiny_config(task="text", text_file=tmp_path / "t.txt", out_dir=tmp_path / "run", lr=1e-2, steps=5))
    curve = losses(tmp_path / "run")
    assert curve[-1] < curve[0] - 0.5, f"the loss did not fall: {curve}"
