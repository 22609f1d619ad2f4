"""Shared helpers for the training tests: a tiny, fast configuration and log readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attnlab.train import TrainConfig

#: a run of a few steps that takes well under a second per step on a CPU
TINY = dict(
    task="mqar",
    vocab_size=16,
    num_kv_pairs=2,
    seq_len=16,
    batch_size=8,
    steps=6,
    warmup_steps=2,
    lr=3e-3,
    min_lr=3e-4,
    log_interval=1,
    eval_interval=3,
    eval_batches=1,
    checkpoint_interval=3,
    device="cpu",
)


def tiny_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def losses(out_dir: Path) -> list[float]:
    """The training loss of every step logged in ``out_dir``/log.jsonl, in order."""
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(out_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def max_relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max |a - b| / max |a|, for two state dicts of the same model."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)).item() for k in a)
