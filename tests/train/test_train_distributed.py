"""Two CPU ranks (gloo) train like one process on the same global batch: DDP, FSDP2 and context parallel.

The ranks are spawned with torchrun's environment variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT) and call the
same ``train`` as ``torchrun -m attnlab train`` does; one spawn runs every case, each with a fresh process
group. A bad configuration fails on every rank with the same ValueError, and no rank hangs (a timeout fails
the test instead).
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from dist_cases import run_rank
from train_cases import TINY, final_weights, losses, max_relative_gap, tiny_config

from attnlab.train import train

TIMEOUT_S = 240
F32 = torch.finfo(torch.float32).eps
STEPS = 3


def _free_port_base() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, cases: list[dict], tmp_path) -> list[dict]:
    context = mp.start_processes(
        run_rank, args=(world, _free_port_base(), str(tmp_path), cases), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world} ranks did not finish within {TIMEOUT_S} s (a rank hangs in a collective?)")
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]


def test_two_ranks_train_like_one_process(tmp_path):
    cases = [
        dict(name="ddp", config={**TINY, "steps": STEPS, "out_dir": tmp_path / "ddp"}),
        dict(name="fsdp", config={**TINY, "steps": STEPS, "fsdp": True, "out_dir": tmp_path / "fsdp"}),
        dict(
            name="cp",
            config={**TINY, "steps": STEPS, "attn_impl": "naive", "context_parallel": 2, "out_dir": tmp_path / "cp"},
        ),
        dict(name="bad_batch", config={**TINY, "batch_size": 3}),
    ]
    reports = _spawn(2, cases, tmp_path)
    for rank, report in enumerate(reports):
        for name in ("ddp", "fsdp", "cp"):
            assert report[name] == "ok", f"rank {rank}, {name}:\n{report[name]}"
        assert report["bad_batch"].startswith("ValueError: batch_size 3 does not split over 2"), report["bad_batch"]

    train(tiny_config(steps=STEPS, out_dir=tmp_path / "one"))
    train(tiny_config(steps=STEPS, attn_impl="naive", out_dir=tmp_path / "one_naive"))
    for name, single in (("ddp", "one"), ("fsdp", "one"), ("cp", "one_naive")):
        one, two = losses(tmp_path / single), losses(tmp_path / name)
        # The same sums in another order (each rank's half, then the all-reduce): float32 rounding. Measured: 8e-8
        # of the loss (under one ulp); 100 ulps leave margin. A wrong loss scale or a missing gradient average
        # changes the second step's loss in the third digit. The weights: AdamW divides each gradient entry by
        # its own RMS, which turns the rounding of a small entry into a relative change of its whole update;
        # measured up to 6e-5 of the weights' magnitude (500 ulps), so the bound is 1e4 ulps (1.2e-3), while
        # one missing or doubled update moves a weight by lr = 1.5e-3 of an O(0.05) magnitude, a few percent.
        gap = max(abs(a - b) for a, b in zip(one, two, strict=True)) / max(one)
        assert gap <= 100 * F32, f"{name}: losses differ by {gap:.3g} of the loss ({one} vs {two})"
        weights_gap = max_relative_gap(final_weights(tmp_path / single), final_weights(tmp_path / name))
        assert weights_gap <= 1e4 * F32, f"{name}: weights differ by {weights_gap:.3g} of their magnitude"
