"""Shared checks for paged attention (paged_torch and the paged_decode Triton kernel): inputs and the rule.

Not a test module (no ``test_`` prefix); imported from this folder like flash_reference.py.

:func:`make_paged_inputs` draws contiguous keys/values per row, then scatters them into pages in a random
(permuted) order, with every slot that no row owns, and every slot past a row's length, poisoned with NaN: a
kernel that reads one of them outputs NaN. :func:`assert_paged_matches_reference` applies FlashAttention's
rule of flash_reference.py to the kv_lens semantics: row ``r`` alone, with its first ``kv_lens[r]`` keys, is
ordinary bottom-right attention, so the float64 reference and the naive backend (the plain math path) run
on each row's slice; the paged output must err by at most 2x naive's error (out and lse) plus the floor of
8 float32 ulps of the reference's magnitude.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flash_reference import FLOOR, max_error

from attnlab.backends import BACKENDS
from attnlab.backends.spec import AttentionSpec
from attnlab.reference import reference_core_attention

__all__ = ["PagedInputs", "assert_paged_matches_reference", "make_paged_inputs", "run_paged"]


@dataclass
class PagedInputs:
    """q (b, h, t_q, d); k, v (b, h_kv, max_len, d) contiguous; the same keys/values in pages; table; lengths."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_pages: torch.Tensor
    value_pages: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor


def make_paged_inputs(
    kv_lens: list[int],
    h: int,
    t_q: int,
    head_dim: int,
    block_size: int,
    *,
    h_kv: int | None = None,
    dtype: torch.dtype = torch.float32,
    spare_blocks: int = 3,
    table_width: int | None = None,
    seed: int = 0,
) -> PagedInputs:
    gen = torch.Generator().manual_seed(seed)
    h_kv = h if h_kv is None else h_kv
    b, max_len = len(kv_lens), max(kv_lens)
    q = torch.randn(b, h, t_q, head_dim, generator=gen)  # (b, h, t_q, d)
    k = torch.randn(b, h_kv, max_len, head_dim, generator=gen)  # (b, h_kv, max_len, d)
    v = torch.randn(b, h_kv, max_len, head_dim, generator=gen)
    blocks_per_row = [-(length // -block_size) for length in kv_lens]
    num_blocks = sum(blocks_per_row) + spare_blocks
    width = max(blocks_per_row) if table_width is None else table_width
    order = torch.randperm(num_blocks, generator=gen).tolist()  # physical pages in random order
    key_pages = torch.full((num_blocks, h_kv, block_size, head_dim), float("nan"))
    value_pages = torch.full((num_blocks, h_kv, block_size, head_dim), float("nan"))
    block_table = torch.full((b, width), -1, dtype=torch.int32)  # unused entries: not a page at all
    for r, length in enumerate(kv_lens):
        for n in range(blocks_per_row[r]):
            page = order.pop()
            block_table[r, n] = page
            keys = slice(n * block_size, min((n + 1) * block_size, length))
            filled = keys.stop - keys.start
            key_pages[page, :, :filled] = k[r, :, keys]
            value_pages[page, :, :filled] = v[r, :, keys]
    cast = {"dtype": dtype}
    return PagedInputs(
        q.to(**cast), k.to(**cast), v.to(**cast), key_pages.to(**cast), value_pages.to(**cast), block_table,
        torch.tensor(kv_lens, dtype=torch.int32),
    )  # fmt: skip


def run_paged(fn: Callable, inputs: PagedInputs, **options) -> tuple[torch.Tensor, ...]:
    """(out,) or (out, lse) of a paged function ``fn(q, key_pages, value_pages, block_table, kv_lens, spec)``."""
    spec = AttentionSpec(**options)
    with torch.no_grad():
        result = fn(inputs.q, inputs.key_pages, inputs.value_pages, inputs.block_table, inputs.kv_lens, spec)
    return result if isinstance(result, tuple) else (result,)


def _per_row(fn: Callable, inputs: PagedInputs, dtype: torch.dtype | None, **options) -> tuple[torch.Tensor, ...]:
    """(out, lse) of ``fn(q, k, v, ...)`` run row by row on each row's first kv_lens keys, concatenated."""
    outs, lses = [], []
    for r, length in enumerate(inputs.kv_lens.tolist()):
        q, k, v = (x[r : r + 1] for x in (inputs.q, inputs.k, inputs.v))
        k, v = k[:, :, :length], v[:, :, :length]  # (1, h_kv, length, d)
        if dtype is not None:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        out, lse = fn(q, k, v, **options)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def assert_paged_matches_reference(fn: Callable, inputs: PagedInputs, **options) -> None:
    """FlashAttention's rule (2x naive's error vs float64, plus a floor) for out and lse, per the kv_lens semantics."""
    as64 = {
        name: value.double() if isinstance(value, torch.Tensor) else value
        for name, value in options.items()
        if name != "return_lse"
    }
    reference = _per_row(reference_core_attention, inputs, torch.float64, **as64)
    plain = {name: value for name, value in options.items() if name != "return_lse"}
    with torch.no_grad():
        naive = _per_row(BACKENDS["naive"], inputs, None, return_lse=True, **plain)
    actual = run_paged(fn, inputs, return_lse=True, **plain)
    assert actual[0].shape == inputs.q.shape and actual[0].dtype == inputs.q.dtype
    lse, ref_lse = actual[1], reference[1]
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "lse's -inf rows differ"
    magnitude = reference[0].abs().max().item()
    for name, got, ref, base in zip(("out", "lse"), actual, reference, naive, strict=True):
        got, ref, base = (torch.where(torch.isneginf(x), 0.0, x) for x in (got, ref, base))
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        floor = FLOOR * (ref.abs().max().item() if name == "lse" else magnitude)
        err, naive_err = max_error(got, ref), max_error(base, ref)
        assert err <= 2.0 * naive_err + floor, f"{name}: error {err:.3g} > 2 x naive's {naive_err:.3g} + {floor:.2g}"
