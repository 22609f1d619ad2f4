"""Runs for the multi-process tests: each spawned rank sets torchrun's environment and calls ``train``.

Every case gets its own port (a fresh process group); a case's outcome (ok, or the ValueError's message)
goes into ``rank{N}.json`` so the test can check every rank.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import torch

__all__ = ["run_rank"]


def run_rank(rank: int, world: int, port: int, result_dir: str, cases: list[dict]) -> None:
    """Entry point of a spawned rank (``torch.multiprocessing.start_processes`` passes ``rank`` first)."""
    from attnlab.train import TrainConfig, train

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    outcomes = {}
    for i, case in enumerate(cases):
        os.environ["MASTER_PORT"] = str(port + i)
        try:
            train(TrainConfig(**case["config"]))
            outcomes[case["name"]] = "ok"
        except ValueError as error:
            outcomes[case["name"]] = f"ValueError: {error}"
        except Exception:  # reported by the test
            outcomes[case["name"]] = traceback.format_exc(limit=-4)
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(outcomes))
