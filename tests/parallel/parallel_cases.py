"""What each spawned rank runs for the context-parallel tests (a helper module, not a test module).

:func:`run_rank` initialises a gloo process group from a file store, runs every case, and writes this rank's
verdicts to ``result_dir/rank{r}.json`` for the test to collect. A case either compares the parallel result
with the single-process one or expects a ``ValueError`` (bad configurations, raised on every rank before any
communication: the cases after it would hang otherwise, and the test's timeout would fail).

The rule (FlashAttention's, as tests/backends/flash_reference.py): every rank unshards the parallel output,
lse and gradients into full tensors and measures their error against the float64
``reference_core_attention``; it must be at most 2x (outputs, lse) / 3x (gradients) the error of the
single-process ``naive`` backend in the same dtype, plus a floor of 8 float32 ulps of the call's largest
reference quantity (naive can be exact by luck), plus, for the ring in bfloat16, one bfloat16 eps of it (see
RING_HALF). A wrong chunk position, mask or merge errs by a tenth of the magnitude; reordered float32 sums
(ring merging, reduce-scattered gradients) by a few ulps. ``unshard``'s round trip and backward are exact.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["bad_cases", "good_cases", "run_rank", "triton_cases"]

FLOOR = 8 * torch.finfo(torch.float32).eps
# RING_HALF: with half-precision inputs the backend rounds each ring block's partial output (and gradients) to
# the input dtype before the float32 merge, one rounding more than a single call makes. The merge weights sum to
# one, so that costs at most half an ulp of the largest partial result; the allowance is one input-dtype eps of
# the call's magnitude (measured: up to 1.1x the 2x rule with 4 ranks; a wrong mask errs by 10x eps and more).
RING_HALF = 1.0
TOKENS = 16  # 2 * world chunks of 4 (2 ranks) or 2 (4 ranks) with load balancing: every block kind occurs
HEAD_DIM = 8


def good_cases(world: int, backends: tuple[str, ...] = ("naive", "flash_torch")) -> list[dict]:
    """Every strategy x load balancing x backend on three attention configurations."""
    configs = [
        dict(name="full", h=world, h_kv=world, causal=False),
        dict(name="causal_gqa_lse", h=2 * world, h_kv=world, causal=True, return_lse=True),
        dict(name="window_gqa_sinks", h=2 * world, h_kv=world, causal=True, window=5, softcap=4.0, sinks=True),
        # ulysses only: the options that need global positions (ring and all_gather refuse them)
        dict(name="alibi_packed", h=world, h_kv=world, causal=True, alibi=True, seq_lens=(5, TOKENS - 5)),
        # bfloat16 inputs: the rule compares with naive in bfloat16 (the ring merges in float32)
        dict(name="bf16_window", h=2 * world, h_kv=world, causal=True, window=5, dtype="bfloat16"),
    ]
    return [
        dict(kind="good", strategy=s, backend=bk, load_balance=lb, **c)
        for c in configs
        for s in (("ulysses",) if c["name"] == "alibi_packed" else ("ring", "all_gather", "ulysses"))
        for lb in (True, False)
        for bk in backends
    ]


def triton_cases(world: int) -> list[dict]:
    """flash_triton (in Triton's interpreter, slow on a CPU): the windowed GQA configuration, every strategy."""
    return [c for c in good_cases(world, ("flash_triton",)) if c["name"] == "window_gqa_sinks" and c["load_balance"]]


def bad_cases(world: int) -> list[dict]:
    """Configurations every rank must refuse with a ValueError whose message contains ``match``."""
    return [
        dict(kind="bad", match="unknown strategy", call=dict(strategy="tree")),
        dict(kind="bad", match="log-sum-exp", call=dict(backend="sdpa")),
        dict(kind="bad", match="k/v heads = 1", call=dict(strategy="ulysses"), h_kv=1),
        dict(kind="bad", match=f"multiple of {2 * world}", local_tokens=3),
        dict(kind="bad", match="does not support alibi_slopes", call=dict(alibi=True)),
        dict(kind="bad", match="does not support seq_lens", call=dict(strategy="all_gather", seq_lens=[2 * world])),
        dict(kind="bad", match="whole sequence", call=dict(strategy="ulysses", seq_lens=[2])),
        dict(kind="bad", match="unknown attention option", call=dict(flavour=1)),
        dict(kind="bad_shard", match=f"multiple of {2 * world}"),
        dict(kind="unshard"),  # not bad cases: the round trip and the backward of unshard,
        dict(kind="ulysses_no_lse"),  # and ulysses over a backend without the lse
    ]


def _inputs(case: dict, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    h, h_kv, dtype = case["h"], case["h_kv"], getattr(torch, case.get("dtype", "float32"))
    q = torch.randn(1, h, TOKENS, HEAD_DIM, generator=gen).to(dtype)  # (b, h, t, d)
    k, v = (torch.randn(1, h_kv, TOKENS, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))  # (b, h_kv, t, d)
    dout = torch.randn(1, h, TOKENS, HEAD_DIM, generator=gen).to(dtype)  # (b, h, t, d)
    dlse = torch.randn(1, h, TOKENS, generator=gen)  # (b, h, t): the lse is float32
    sinks = torch.randn(h, generator=gen)  # (h,)
    return q, k, v, dout, dlse, sinks


def _options(case: dict, sinks: torch.Tensor | None) -> dict:
    options = dict(causal=case["causal"], window=case.get("window"), softcap=case.get("softcap"))
    if case.get("sinks"):
        options["sinks"] = sinks
    if case.get("alibi"):  # fixed slopes (flash_torch refuses learned ones): 2^(-8 (i+1) / h), as in ALiBi
        options["alibi_slopes"] = 2.0 ** (-8.0 * torch.arange(1, case["h"] + 1) / case["h"])  # (h,)
    if case.get("seq_lens"):
        options["seq_lens"] = case["seq_lens"]
    return options


def _with_grads(fn, q, k, v, dout, dlse, options: dict) -> dict[str, torch.Tensor]:
    """out, lse and the gradients of sum(out * dout) + sum(lse * dlse) for q, k, v (and sinks)."""
    leaves = {"q": q, "k": k, "v": v}
    if "sinks" in options:
        leaves["sinks"] = options["sinks"]
    leaves = {name: t.detach().clone().requires_grad_() for name, t in leaves.items()}
    options = {**options, **({"sinks": leaves["sinks"]} if "sinks" in leaves else {})}
    out, lse = fn(leaves["q"], leaves["k"], leaves["v"], **options)
    loss = (out * dout).sum() + (lse * dlse).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"out": out.detach(), "lse": lse.detach(), **{f"d{n}": g for n, g in zip(leaves, grads, strict=True)}}


def _reference(case: dict, cache: dict) -> tuple[dict, dict]:
    """(float64 reference, float32 naive) results of the whole sequence in one process, cached per config."""
    from attnlab.backends import BACKENDS
    from attnlab.reference import reference_core_attention

    key = case["name"]
    if key not in cache:
        q, k, v, dout, dlse, sinks = _inputs(case)
        options = _options(case, sinks)
        as64 = {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in options.items()}
        ref = _with_grads(reference_core_attention, *(t.double() for t in (q, k, v, dout, dlse)), as64)

        def naive(q, k, v, **opts):
            return BACKENDS["naive"](q, k, v, return_lse=True, **opts)

        cache[key] = (ref, _with_grads(naive, q, k, v, dout, dlse, options))
    return cache[key]


def _run_good(case: dict, cache: dict) -> None:
    from attnlab.parallel import context_parallel_attention, shard, unshard

    ref, naive = _reference(case, cache)
    q, k, v, dout, dlse, sinks = _inputs(case)
    lb = case["load_balance"]

    def parallel(q_l, k_l, v_l, **options):
        return context_parallel_attention(
            q_l,
            k_l,
            v_l,
            strategy=case["strategy"],
            backend=case["backend"],
            load_balance=lb,
            return_lse=True,
            **options,
        )

    local = [shard(t, load_balance=lb) for t in (q, k, v, dout, dlse.unsqueeze(-1))]
    got = _with_grads(parallel, *local[:4], local[4].squeeze(-1), _options(case, sinks))
    if "dsinks" in got:  # each rank holds its share of a replicated parameter's gradient
        dist.all_reduce(got["dsinks"])
    full = {
        n: t if n == "dsinks" else unshard(t.unsqueeze(-1) if t.dim() == 3 else t, load_balance=lb)
        for n, t in got.items()
    }
    full = {n: t.squeeze(-1) if n == "lse" else t for n, t in full.items()}
    magnitude = max(ref[n].abs().max().item() for n in ref if n != "lse")
    for name, value in full.items():
        expected = ref[name]
        assert value.shape == expected.shape, f"{name}: shape {tuple(value.shape)} != {tuple(expected.shape)}"
        assert value.dtype == naive[name].dtype, f"{name}: dtype {value.dtype}, single process {naive[name].dtype}"
        assert torch.isfinite(value).all(), f"{name} has non-finite values"
        err = (value.double() - expected).abs().max().item()
        naive_err = (naive[name].double() - expected).abs().max().item()
        factor = 2.0 if name in ("out", "lse") else 3.0
        floor = FLOOR * (expected.abs().max().item() if name == "lse" else magnitude)
        if case["strategy"] == "ring" and value.dtype in (torch.float16, torch.bfloat16):
            floor += RING_HALF * torch.finfo(q.dtype).eps * magnitude
        assert err <= factor * naive_err + floor, (
            f"{name}: error {err:.3g} > {factor} x naive's {naive_err:.3g} + floor {floor:.2g}"
        )


def _run_unshard_grad(world: int) -> None:
    """unshard's backward: every rank's loss uses the full tensor, so a shard's gradient is the sum over ranks."""
    from attnlab.parallel import shard, unshard

    gen = torch.Generator().manual_seed(1)
    full, weight = torch.randn(2, 3, TOKENS, 2, generator=gen), torch.randn(2, 3, TOKENS, 2, generator=gen)
    for dim, lb in ((2, True), (-2, False), (0, False)):
        if full.shape[dim] % (2 * world if lb else world):
            continue
        local = shard(full, dim, load_balance=lb).requires_grad_()
        gathered = unshard(local, dim, load_balance=lb)
        assert torch.equal(gathered, full), f"unshard(shard(x)) != x (dim={dim}, load_balance={lb})"
        (grad,) = torch.autograd.grad((gathered * weight).sum(), local)
        assert torch.equal(grad, world * shard(weight, dim, load_balance=lb)), f"unshard backward (dim={dim})"


def _run_ulysses_without_lse(world: int) -> None:
    """ulysses needs no lse, so a backend without one (sdpa) serves it: same kernel, same rows, same result."""
    from attnlab.backends import BACKENDS
    from attnlab.parallel import context_parallel_attention, shard, unshard

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2 * world, TOKENS, HEAD_DIM, generator=gen) for _ in range(3))  # (b, h, t, d)
    expected = BACKENDS["sdpa"](q, k, v, causal=True)  # (b, h, t, d)
    local = context_parallel_attention(*(shard(t) for t in (q, k, v)), strategy="ulysses", backend="sdpa")
    err = (unshard(local) - expected).abs().max().item()
    # the same float32 kernel on the same rows, batched over fewer heads: a few ulps at most (FLOOR)
    assert err <= FLOOR * expected.abs().max().item(), f"ulysses over sdpa errs by {err:.3g}"


def _run_bad(case: dict, world: int) -> None:
    from attnlab.parallel import context_parallel_attention, shard

    call = dict(case.get("call", {}))
    if case["kind"] == "bad_shard":
        try:
            shard(torch.zeros(1, 1, 2 * world + 1, HEAD_DIM))
        except ValueError as error:
            assert case["match"] in str(error), f"message {error} lacks {case['match']!r}"
            return
        raise AssertionError("shard accepted a sequence that does not split into 2N chunks")
    t_local = case.get("local_tokens", 2)
    h, h_kv = 2 * world, case.get("h_kv", world)
    q, k, v = torch.randn(1, h, t_local, HEAD_DIM), *(torch.randn(1, h_kv, t_local, HEAD_DIM) for _ in range(2))
    if call.pop("alibi", False):
        call["alibi_slopes"] = torch.ones(h)
    try:
        context_parallel_attention(q, k, v, **call)
    except ValueError as error:
        assert case["match"] in str(error), f"message {error} lacks {case['match']!r}"
        return
    raise AssertionError(f"{case} was accepted")


def run_rank(rank: int, world: int, store: str, result_dir: str, cases: list[dict]) -> None:
    """Entry point of a spawned rank (``torch.multiprocessing.start_processes`` passes ``rank`` first).

    Cases on ``flash_triton`` run its kernels in Triton's interpreter, switched on here, before anything in
    this fresh process imports triton.
    """
    if any(case.get("backend") == "flash_triton" for case in cases):
        os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    failures: list[str] = []
    cache: dict = {}
    for case in cases:
        try:
            if case["kind"] == "good":
                _run_good(case, cache)
            elif case["kind"] == "unshard":
                _run_unshard_grad(world)
            elif case["kind"] == "ulysses_no_lse":
                _run_ulysses_without_lse(world)
            else:
                _run_bad(case, world)
        except Exception:  # collected and reported by the test, one line per case
            failures.append(f"{case}: {traceback.format_exc(limit=-3)}")
    dist.barrier()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"ran": len(cases), "failures": failures}))
    dist.destroy_process_group()
