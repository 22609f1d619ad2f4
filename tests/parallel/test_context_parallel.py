"""Context-parallel attention on 2 and 4 CPU ranks (gloo) equals the single-process result.

One process group per world size runs every case (spawning is the slow part): ring, all_gather and ulysses,
load balancing on and off, on naive and flash_torch (flash_triton in Triton's interpreter for one windowed GQA
configuration), non-causal, causal GQA with the lse, and a causal sliding window with GQA, softcap and sinks;
then the refusals of bad configurations. See parallel_cases.py for the cases and the error rule. Every rank
reports its verdicts, and a hang fails the test after a timeout.
"""

from __future__ import annotations

import json
import time

import pytest
import torch.multiprocessing as mp
from parallel_cases import bad_cases, good_cases, run_rank, triton_cases

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
    # flash_triton runs in Triton's interpreter here (seconds per call): one configuration, 2 ranks only
    cases = bad_cases(world) + good_cases(world) + (triton_cases(world) if world == 2 else [])
    reports = _spawn(world, cases, tmp_path)
    for rank, report in enumerate(reports):
        assert report["ran"] == len(cases)
        assert not report["failures"], f"rank {rank}:\n" + "\n".join(report["failures"])
