"""The training loop: :func:`train` runs a :class:`~.config.TrainConfig` from start (or checkpoint) to end.

Each step draws the GLOBAL batch of that step (from ``(seed, step)``), keeps this rank's rows (and, with
context parallelism, its tokens), and minimises the mean cross-entropy over the global batch's answer
positions: each rank's loss is its SUM over its targets times ``world_size / answers``, so the gradient
average DDP or FSDP2 takes over the ranks is exactly the single-process gradient. Then: gradient clipping,
the scheduled learning rate (:mod:`.schedule`), an AdamW step (:mod:`.optim`). bfloat16 autocast on CUDA,
float32 on CPU.

Everything that can be refused (the world size, the data file, the checkpoint to resume, the model and its
attention implementation) is checked before the process group is joined, so every rank fails alike with
one ``ValueError`` and none waits in a collective. The library prints nothing: ``progress`` (called on
rank 0 only) receives every logged record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batching import local_batch
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .context_parallel import context_parallel_core
from .data import TrainData, make_data
from .distributed import Ranks, all_sum, join, plan_ranks, shutdown, wrap_model
from .evaluate import evaluate
from .model import build_model, count_parameters
from .mqar import IGNORE_INDEX
from .optim import make_optimizer, set_learning_rate
from .plot import PLOT_NAME, can_plot, plot_loss
from .records import RunFiles
from .schedule import learning_rate

__all__ = ["ProgressFn", "train"]

#: Called on rank 0 with each record: ``{"event": "start" | "log" | "done", "step": ..., "steps": ..., ...}``.
ProgressFn = Callable[[dict[str, Any]], None]


def train(config: TrainConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train as ``config`` says; return the final metrics (also written to ``metrics.json`` with an out_dir) and
    this process's ``rank``."""
    ranks = plan_ranks(config)  # a bad world size fails here, before any process group
    data = make_data(config)  # a missing, empty or unreadable text file fails here
    payload = read_checkpoint(config.out_dir, config) if config.resume else None
    # the same initial weights on every rank, whichever attention implementation computes the model
    model = build_model(config.model, config.attn_impl, data.vocab_size, config.seq_len, seed=config.seed)
    parameters = count_parameters(model)
    ranks = join(ranks)
    try:
        if ranks.cp_size > 1:
            model.set_core_attention(context_parallel_core(ranks, config.cp_strategy, config.attn_impl))
        model = wrap_model(model, ranks, config.fsdp)
        optimizer = make_optimizer(model, config.lr, config.weight_decay)
        done = load_checkpoint(payload, model, optimizer) if payload is not None else 0
        return _run(config, ranks, data, model, optimizer, done, parameters, progress)
    finally:
        shutdown(ranks)


def _forward(model: nn.Module, ranks: Ranks, device: torch.device) -> Callable:
    """``forward(inputs, targets)`` on a global batch -> this rank's (logits (n, V), targets (n,))."""

    def forward(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, positions = local_batch(inputs, targets, ranks)  # (b_l, t_l) each, positions (t_l,) or None
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x) if positions is None else model(x, positions=positions.to(device))  # (b_l, t_l, V)
        return logits.flatten(0, 1), y.flatten()  # (n, V), (n,)

    return forward


def _run(
    config: TrainConfig,
    ranks: Ranks,
    data: TrainData,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    done: int,
    parameters: int,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    files = RunFiles(config.out_dir) if config.out_dir is not None and ranks.is_main else None
    if files is not None:
        files.start(config.to_dict(), done)
    report = progress if ranks.is_main and progress is not None else (lambda record: None)
    report({"event": "start", "step": done, "steps": config.steps, "parameters": parameters})
    forward = _forward(model, ranks, ranks.device)
    eval_batches = data.eval_batches()
    tokens_per_step = config.batch_size * config.seq_len
    started = last_time = time.perf_counter()
    last_step = done
    record: dict[str, Any] = {}
    model.train()
    for step in range(done, config.steps):
        lr = learning_rate(
            step, lr=config.lr, min_lr=config.min_lr, warmup_steps=config.warmup_steps, total_steps=config.steps
        )
        inputs, targets = data.batch(step)  # (batch_size, seq_len) each: the global batch
        answers = max(int((targets != IGNORE_INDEX).sum()), 1)
        logits, local_targets = forward(inputs, targets)  # (n, V), (n,)
        loss_sum = F.cross_entropy(logits.float(), local_targets, ignore_index=IGNORE_INDEX, reduction="sum")
        (loss_sum * (ranks.world_size / answers)).backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
        set_learning_rate(optimizer, lr)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = all_sum(loss_sum.float(), ranks).item() / answers
        count = step + 1
        evaluating = count % config.eval_interval == 0 or count == config.steps
        if count % config.log_interval == 0 or count == config.steps or evaluating:
            now = time.perf_counter()
            record = {
                "step": count,
                "loss": loss,
                "lr": lr,
                "grad_norm": float(_full(grad_norm)),
                "tokens_per_s": tokens_per_step * (count - last_step) / max(now - last_time, 1e-9),
                "elapsed_s": now - started,
            }
            if evaluating:
                model.eval()
                record.update(evaluate(forward, eval_batches, ranks))
                model.train()
            last_time, last_step = time.perf_counter(), count
            if files is not None:
                files.log(record)
            report({"event": "log", "steps": config.steps, **record})
        if config.out_dir is not None and (
            (config.checkpoint_interval and count % config.checkpoint_interval == 0) or count == config.steps
        ):
            save_checkpoint(config.out_dir, model, optimizer, count, config, ranks)
    wall = time.perf_counter() - started
    metrics = {
        "task": config.task,
        "model": config.model,
        "attn_impl": config.attn_impl,
        "parameters": parameters,
        "world_size": ranks.world_size,
        "steps": config.steps,
        "resumed_from": done,
        "final_loss": record.get("loss"),
        "eval_loss": record.get("eval_loss"),
        "accuracy": record.get("accuracy"),
        "wall_s": wall,
        "tokens_per_s": tokens_per_step * (config.steps - done) / max(wall, 1e-9),
    }
    if files is not None:
        if can_plot():
            plot_loss(files.read_log(), files.out_dir / PLOT_NAME, f"{config.task}: {config.model}, {config.attn_impl}")
        metrics["plot"] = PLOT_NAME if can_plot() else "skipped: matplotlib is not installed"
        files.finish(metrics)
    report({"event": "done", "step": config.steps, "steps": config.steps, **metrics})
    return {**metrics, "rank": ranks.rank}


def _full(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's gradient norm) as a plain tensor; a plain tensor as is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
