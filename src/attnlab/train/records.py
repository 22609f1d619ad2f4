"""The run's files in the output directory: ``config.json``, ``log.jsonl``, ``metrics.json``.

``log.jsonl`` holds one JSON object per logged step (``step``, ``loss``, ``lr``, ``tokens_per_s``, ``grad_norm``,
``elapsed_s``, and ``eval_loss`` / ``accuracy`` on evaluation steps). On resume it is cut back to the
checkpoint's step, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["LOG_NAME", "METRICS_NAME", "RunFiles"]

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.json"


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(partial, path)


class RunFiles:
    """Writes a run's records into ``out_dir`` (created if missing)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"out_dir {str(self.out_dir)!r} exists and is not a directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / LOG_NAME

    def start(self, config: dict[str, Any], resumed_step: int) -> None:
        """Write ``config.json``; start ``log.jsonl`` afresh, or keep its records up to ``resumed_step``."""
        _write_json(self.out_dir / CONFIG_NAME, config)
        kept = [r for r in self.read_log() if r["step"] <= resumed_step] if resumed_step > 0 else []
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def read_log(self) -> list[dict[str, Any]]:
        """The records of ``log.jsonl`` (none if it is missing; a torn last line is dropped)."""
        if not self.log_path.exists():
            return []
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a run killed mid-write leaves half a line
        return records

    def log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def finish(self, metrics: dict[str, Any]) -> None:
        _write_json(self.out_dir / METRICS_NAME, metrics)
