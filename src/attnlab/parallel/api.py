"""``context_parallel_attention``: attend sequence-sharded q, k, v with one of three strategies.

Every check runs before any communication and depends only on what every rank shares (shapes, options,
world size), so a bad configuration raises the same ``ValueError`` on every rank and no rank is left
waiting in a collective.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ..backends import BACKENDS, Backend
from ..backends.spec import AttentionSpec
from .all_gather import all_gather_attention
from .comm import group_size, require_initialized
from .layout import SequenceLayout
from .ring import ring_attention
from .ulysses import ulysses_attention

__all__ = ["STRATEGIES", "context_parallel_attention"]

#: strategy -> the optional attention features (names of ``backends.spec.FEATURES``) it can honour.
STRATEGIES: dict[str, frozenset[str]] = {
    "ring": frozenset({"gqa", "window", "softcap", "sinks", "return_lse"}),
    "all_gather": frozenset({"gqa", "window", "softcap", "sinks", "return_lse"}),
    "ulysses": frozenset({"gqa", "window", "softcap", "sinks", "alibi_slopes", "seq_lens", "return_lse", "dropout"}),
}
_WHY_NOT = {
    "alibi_slopes": "ALiBi needs each score's global distance, which the per-chunk calls do not see",
    "seq_lens": "packed sequences would need their boundaries cut at the chunk edges",
    "dropout": "the dropout masks would not match a single-process run",
}


def _check_strategy(strategy: object, backend: object) -> Backend:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    chosen = BACKENDS[backend]
    if strategy != "ulysses" and "return_lse" not in chosen.features:  # the partial results merge on the lse
        able = [name for name, b in BACKENDS.items() if "return_lse" in b.features]
        raise ValueError(
            f"strategy {strategy!r} needs a backend that returns the log-sum-exp; {backend!r} does not "
            f"(backends that do: {', '.join(able)})"
        )
    reason = chosen.unavailable_reason()
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run here: {reason}")
    return chosen


def _check_features(strategy: str, spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, chosen: Backend) -> None:
    for feature in spec.features(q, k):
        if feature not in STRATEGIES[strategy]:
            able = [name for name, features in STRATEGIES.items() if feature in features]
            why = f" ({_WHY_NOT[feature]})" if feature in _WHY_NOT else ""
            raise ValueError(
                f"context-parallel strategy {strategy!r} does not support {feature}{why}; strategies that do: "
                f"{', '.join(able) or 'none'}"
            )
    chosen.check_features(spec.features(q, k) if strategy == "ulysses" else (*spec.features(q, k), "return_lse"))


def _check_shapes(strategy: str, q: torch.Tensor, k: torch.Tensor, world: int) -> None:
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"context parallelism shards one sequence: q and k must hold the same number of local tokens, got "
            f"{q.shape[2]} and {k.shape[2]}"
        )
    if strategy == "ulysses":
        for name, heads in (("q heads", q.shape[1]), ("k/v heads", k.shape[1])):
            if heads % world != 0:
                raise ValueError(
                    f"strategy 'ulysses' shards heads over {world} ranks: {name} = {heads} is not divisible by "
                    f"{world}; use strategy 'ring' or 'all_gather'"
                )


def _preflight(
    strategy: str, chosen: Backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, world: int
) -> None:
    """Run the backend once on one key of each shard, with as many queries as one block call will pass it, so that
    whatever it refuses (a device it cannot use, a dtype it lacks, too many queries) is raised here, on every rank,
    before the first message; positional options are left out. A backend without a backward pass is refused here
    too when an input requires grad (its refusal would otherwise come in the middle of the backward ring)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        if (reason := chosen.unsupported_reason(q.device.type, "backward")) is not None:
            raise ValueError(f"the {chosen.name} backend {reason}, and q, k or v requires grad")
    return_lse = spec.return_lse if strategy == "ulysses" else True  # ring and all_gather always ask for it
    one = dataclasses.replace(spec, causal=False, window=None, seq_lens=None, return_lse=return_lse, dropout_p=0.0)
    queries = q.shape[2] * (world if strategy == "ulysses" else 1)  # at most: ulysses attends the whole sequence
    with torch.no_grad():
        probe = q[:, :, :1].expand(-1, -1, queries, -1)  # (b, h, queries, d): the block's query count
        chosen.attend(probe, k[:, :, :1], v[:, :, :1], one)


def context_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strategy: str = "ring",
    backend: str = "flash_torch",
    group: dist.ProcessGroup | None = None,
    load_balance: bool = True,
    **spec_options,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's queries over the whole sequence, every rank holding a shard of q, k, v.

    q is (b, h, t_local, d) and k, v are (b, h_kv, t_local, d): this rank's tokens of one sequence of
    ``world_size * t_local`` tokens, laid out as :func:`attnlab.parallel.shard` does (``load_balance`` must
    match). ``spec_options`` are the backend keywords (``causal``, ``scale``, ``window``, ``softcap``,
    ``sinks``, ``return_lse``, ...). Returns this rank's output (b, h, t_local, d) [and lse (b, h, t_local)],
    equal to the matching shard of the single-process result. Differentiable with respect to q, k, v and
    ``sinks``; a replicated ``sinks`` gets this rank's share of its gradient (sum it over ranks, as
    data-parallel training does). ``strategy``: ``"ring"``, ``"all_gather"`` or ``"ulysses"``.
    """
    chosen = _check_strategy(strategy, backend)
    try:
        spec = AttentionSpec(**spec_options)
    except TypeError as error:
        raise ValueError(f"unknown attention option in {sorted(spec_options)}: {error}") from None
    dataclasses.replace(spec, seq_lens=None).check(q, k, v)  # seq_lens counts the global tokens: checked below
    _check_features(strategy, spec, q, k, chosen)
    # The backend's own refusals first (they need no process group; ulysses' block holds the whole sequence).
    _preflight(strategy, chosen, q, k, v, spec, group_size(group) if dist.is_initialized() else 1)
    require_initialized()
    world = group_size(group)
    _check_shapes(strategy, q, k, world)
    layout = SequenceLayout.from_local(q.shape[2], world, load_balance)
    if spec.seq_lens is not None and sum(spec.seq_lens) != layout.tokens:
        raise ValueError(
            f"seq_lens {list(spec.seq_lens)} sum to {sum(spec.seq_lens)}, not to the {layout.tokens} tokens of the "
            f"whole sequence ({world} ranks x {q.shape[2]} local tokens)"
        )

    if strategy == "ulysses":
        return ulysses_attention(q, k, v, layout, spec, chosen, group)
    if strategy == "all_gather":
        out, lse = all_gather_attention(q, k, v, layout, dataclasses.replace(spec, return_lse=True), chosen, group)
        return (out, lse) if spec.return_lse else out

    return ring_attention(q, k, v, layout, spec, chosen, group)
