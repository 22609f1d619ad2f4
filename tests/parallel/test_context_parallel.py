"""Context-parallel attention on 2 and 4 CPU ranks (gloo) equals the single-process result.

One process group per world size runs every case (spawning is the slow part); see parallel_cases.py for the
cases and the error rule. Every rank reports its verdicts, and a hang fails the test after a timeout.
"""

from __future__ import annotations

import json
import time

import pytest
import torch.multiprocessing as mp
from parallel_cases import bad_cases, good_cases, run_rank

TIMEOUT_S = 240  # a rank stuck in a collective must fail the test, not hang the suite


def _spawn(world: int, cases: list[dict], tmp_path) -> list[dict]:
    context = mp.start_processes(
        run_rank,
        args=(world, str(tmp_path / "store"), str(tmp_path), cases),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world} ranks did not finish within {TIMEOUT_S} s (a rank hangs in a collective?)")
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_every_strategy_matches_single_process(world, tmp_path):
    cases = bad_cases(world) + good_cases(world)
    reports = _spawn(world, cases, tmp_path)
    for rank, report in enumerate(reports):
        assert report["ran"] == len(cases)
        assert not report["failures"], f"rank {rank}:\n" + "\n".join(report["failures"])
