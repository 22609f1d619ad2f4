"""Training checkpoints: everything an exact resume needs, in one file ``checkpoint.pt`` of the output directory.

It holds the model's and the optimizer's full (unsharded) state, the number of steps done (which is also the
learning-rate schedule's position and the data position: batch ``step`` is drawn from ``(seed, step)``), the
RNG states, and the run's configuration (a resume with other settings would not continue the same run).
The state dicts go through ``torch.distributed.checkpoint.state_dict``, so the same file serves a plain
model, DDP and FSDP2 (sharded parameters are gathered on save and scattered on load). Rank 0 writes,
atomically (a temporary file renamed), so a run killed mid-save keeps its previous checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

if TYPE_CHECKING:
    from .config import TrainConfig
    from .distributed import Ranks

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
#: Settings a resumed run may change: they do not change what is computed.
_FREE = frozenset({"resume", "out_dir", "log_interval", "eval_interval", "checkpoint_interval", "device"})
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig, ranks: Ranks
) -> None:
    """Write the state after ``step`` optimizer steps. Every rank must call it (FSDP gathers the shards)."""
    model_state = get_model_state_dict(model, options=_FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if ranks.is_main:
        payload = {
            "step": step,
            "model": model_state,
            "optimizer": optim_state,
            "rng": _rng_state(),
            "config": config.to_dict(),
        }
        path = Path(out_dir) / CHECKPOINT_NAME
        partial = path.with_suffix(".pt.partial")
        torch.save(payload, partial)
        os.replace(partial, path)
    if ranks.distributed:
        dist.barrier()  # no rank reads or overwrites the file while rank 0 is still writing it


def read_checkpoint(out_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint in ``out_dir``, checked against ``config`` (every rank reads it: a ``ValueError`` is raised
    on all of them alike, before any collective)."""
    path = Path(out_dir) / CHECKPOINT_NAME
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"nothing to resume: {str(path)!r} does not exist") from None
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {error}") from None
    if not isinstance(payload, dict) or not {"step", "model", "optimizer", "rng", "config"} <= set(payload):
        raise ValueError(f"{str(path)!r} is not an attnlab training checkpoint")
    saved, now = payload["config"], config.to_dict()
    changed = sorted(k for k in now if k not in _FREE and saved.get(k) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed[:5])
        raise ValueError(
            f"the checkpoint in {str(out_dir)!r} was made with other settings ({details}); resume with its settings"
        )
    return payload


def load_checkpoint(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore model, optimizer and RNG states from :func:`read_checkpoint`'s payload; the steps done."""
    set_model_state_dict(model, payload["model"], options=_FULL)
    set_optimizer_state_dict(model, optimizer, payload["optimizer"], options=_FULL)
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return int(payload["step"])
