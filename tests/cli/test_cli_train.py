"""``attnlab train``: help with examples, a short run's files and summary, one-line errors, python -m attnlab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.cli import main

TINY = [
    "--vocab-size", "16", "--num-kv-pairs", "2", "--seq-len", "16", "--batch-size", "8", "--steps", "3",
    "--warmup-steps", "1", "--eval-batches", "1", "--log-interval", "1", "--device", "cpu",
]  # fmt: skip


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "attnlab train --task mqar --out runs/mqar" in text and "torchrun --nproc-per-node 2" in text


def test_a_short_run_writes_its_files_and_a_summary(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("3 steps in ") and "held-out accuracy" in summary
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--task", "lm"], "unknown task 'lm'"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--task", "text", "--text-file", "missing.txt"], "cannot read text file 'missing.txt'"),
        (["--resume", "--out", "nowhere"], "nothing to resume"),
        (["--impl", "sdpa", "--model", "window"], "window"),
    ],
)
def test_errors_are_one_line(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnlab train: error: ") and match in err, err


def test_python_dash_m_attnlab_runs_the_command():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "attnlab", "train", "--steps", "0"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2 and done.stderr.startswith("attnlab train: error: steps must be"), done.stderr
