"""``attnlab train``: train a small decoder from scratch (MQAR or a text file), on one process or under torchrun."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..train import PRESETS, TASKS, TrainConfig, train

__all__ = ["add_parser"]

_DEFAULTS = TrainConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    parser = subparsers.add_parser(
        "train",
        help="train a small decoder from scratch: MQAR (associative recall) or a text file; DDP/FSDP2 via torchrun",
        description=(
            "Train a decoder from scratch. Task 'mqar' (multi-query associative recall: recall the value paired "
            "with each queried key) reports the held-out accuracy; task 'text' trains next-token prediction on "
            "--text-file (bytes, or --tokenizer's ids). With --out, writes log.jsonl, metrics.json, loss.png and "
            "checkpoints (--resume continues exactly). Under torchrun, ranks split the global --batch-size (DDP, "
            "or FSDP2 with --fsdp). Progress goes to stderr (rank 0)."
        ),
        epilog=(
            "examples:\n"
            "  attnlab train --task mqar --out runs/mqar        # the defaults reach >= 0.9 accuracy on a CPU\n"
            "  attnlab train --task mqar --out runs/mqar --resume\n"
            "  attnlab train --task text --text-file book.txt --steps 500 --seq-len 128\n"
            "  torchrun --nproc-per-node 2 -m attnlab train --task mqar --out runs/ddp\n"
            "  torchrun --nproc-per-node 2 -m attnlab train --task mqar --fsdp\n"
            "on a busy CPU, OMP_NUM_THREADS=1 is often several times faster (see docs/training.md)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--task", default=d.task, help=f"{' or '.join(TASKS)} (default {d.task})")
    add("--model", default=d.model, help=f"model preset: {', '.join(PRESETS)} (default {d.model})")
    add("--impl", dest="attn_impl", default=d.attn_impl, help=f"attention implementation (default {d.attn_impl})")
    add("--vocab-size", type=int, default=d.vocab_size, help=f"MQAR vocabulary (default {d.vocab_size})")
    add("--num-kv-pairs", type=int, default=d.num_kv_pairs, help=f"MQAR pairs per sequence (default {d.num_kv_pairs})")
    add("--num-queries", type=int, default=d.num_queries, help="MQAR queries per sequence (default: as many as fit)")
    add("--text-file", type=Path, default=None, help="text to train on (task text)")
    add("--tokenizer", type=Path, default=None, help="a tokenizer.json (task text; default: bytes 0..255)")
    add("--seq-len", type=int, default=d.seq_len, help=f"tokens per sequence (default {d.seq_len})")
    add("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    add("--batch-size", type=int, default=d.batch_size, help=f"GLOBAL batch, split over ranks (default {d.batch_size})")
    add("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    add("--min-lr", type=float, default=d.min_lr, help=f"cosine decay floor (default {d.min_lr:g})")
    add("--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warm-up (default {d.warmup_steps})")
    add("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW decay (default {d.weight_decay:g})")
    add("--grad-clip", type=float, default=d.grad_clip, help=f"max gradient norm, 0 off (default {d.grad_clip:g})")
    add("--seed", type=int, default=d.seed, help=f"initialisation and data seed (default {d.seed})")
    add("--eval-seed", type=int, default=d.eval_seed, help=f"held-out data seed (default {d.eval_seed})")
    add("--eval-batches", type=int, default=d.eval_batches, help=f"batches per evaluation (default {d.eval_batches})")
    add("--log-interval", type=int, default=d.log_interval, help=f"steps per log record (default {d.log_interval})")
    add("--eval-interval", type=int, default=d.eval_interval, help=f"steps per evaluation (default {d.eval_interval})")
    add(
        "--checkpoint-interval",
        type=int,
        default=d.checkpoint_interval,
        help=f"steps per checkpoint, 0 only at the end (default {d.checkpoint_interval})",
    )
    add("--out", dest="out_dir", type=Path, default=None, help="output directory (logs, metrics, plot, checkpoint)")
    add("--resume", action="store_true", help="continue from the checkpoint in --out")
    add("--fsdp", action="store_true", help="shard parameters with FSDP2 (fully_shard) instead of DDP")
    add(
        "--context-parallel",
        type=int,
        default=d.context_parallel,
        help=f"ranks sharing each sequence's tokens (default {d.context_parallel})",
    )
    add("--cp-strategy", default=d.cp_strategy, help=f"ring, all_gather or ulysses (default {d.cp_strategy})")
    add("--device", default=d.device, help=f"cpu, cuda or auto (default {d.device})")
    parser.set_defaults(func=run)


class _Progress:
    """A rich progress bar on stderr: step, loss, learning rate, tokens/s, and the latest held-out accuracy."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None
        self.accuracy = ""
        self.running = False

    def stop(self) -> None:
        """End the bar, if it was started (a run refused before its first step shows none)."""
        if self.running:
            self.bar.stop()
            self.running = False

    def __call__(self, record: dict[str, Any]) -> None:
        if record["event"] == "start":
            self.bar.start()
            self.running = True
            self.task = self.bar.add_task("train", total=record["steps"], completed=record["step"], status="")
            return
        if record["event"] == "done":
            self.stop()
            return
        if "accuracy" in record:
            self.accuracy = f" acc {record['accuracy']:.3f}"
        status = f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s{self.accuracy}"
        self.bar.update(self.task, completed=record["step"], status=status)


def run(args: argparse.Namespace) -> int:
    fields = {name: value for name, value in vars(args).items() if name not in ("command", "func")}
    config = TrainConfig(**fields)  # every setting is checked here, before anything runs
    progress = _Progress()
    try:
        metrics = train(config, progress=progress)
    finally:
        progress.stop()
    if metrics["rank"] == 0:
        accuracy = "" if metrics["accuracy"] is None else f", held-out accuracy {metrics['accuracy']:.4f}"
        print(
            f"{metrics['steps']} steps in {metrics['wall_s']:.1f} s ({metrics['tokens_per_s']:,.0f} tokens/s): "
            f"final loss {metrics['final_loss']:.4f}{accuracy}"
            + (f"; files in {config.out_dir}" if config.out_dir is not None else ""),
            file=sys.stderr,
        )
    return 0
