"""The decoder's view of a paged KV cache (:class:`~attnlab.serving.paged_cache.PagedKVCache`).

A serving engine keeps the keys and values of many requests in one pool of blocks; each forward pass runs
some of them (``seq_ids``) and gives the model a :class:`PagedBatch`: what each row's new tokens' positions
are, which slots their keys and values go to, and the block tables through which attention reads them.
Every layer writes its new keys/values into its pages and attends through the table: with the backend's
paged attention when it has one (``Backend.attend_paged``), else by gathering each row's pages into a
contiguous tensor first and attending with ``kv_lens`` (slower: a copy of the cache per step, but any
backend with ``kv_lens`` can do it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .cache import AttendFn, CacheStep, LayerCache

if TYPE_CHECKING:
    from ..serving.paged_cache import PagedKVCache

__all__ = ["PagedBatch", "PagedKV", "PagedLayerCache", "PagedStep", "gather_pages"]


@dataclass(frozen=True)
class PagedKV:
    """One layer's pages (num_blocks, h_kv, block_size, hd), the rows' block tables (b, max_blocks) and
    ``kv_lens`` (b,): what paged attention reads."""

    key_pages: torch.Tensor
    value_pages: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor


def gather_pages(pages: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """Each row's blocks in order as one contiguous tensor: (b, h_kv, max_blocks * block_size, hd)."""
    b, max_blocks = block_table.shape
    _, h_kv, block_size, hd = pages.shape
    rows = pages[block_table.long()]  # (b, max_blocks, h_kv, block_size, hd)
    return rows.transpose(1, 2).reshape(b, h_kv, max_blocks * block_size, hd)  # (b, h_kv, t_k, hd)


@dataclass(frozen=True)
class PagedStep(CacheStep):
    """A :class:`~.cache.CacheStep` whose keys live in pages: ``slots`` (b * t,) where the new tokens' keys go,
    row by row; ``block_table`` (b, max_blocks)."""

    slots: torch.Tensor | None = None
    block_table: torch.Tensor | None = None


class PagedLayerCache(LayerCache):
    """Layer ``layer`` of a :class:`PagedKVCache`."""

    def __init__(self, cache: PagedKVCache, layer: int) -> None:
        self.cache = cache
        self.layer = layer

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: CacheStep, attend: AttendFn):
        if not isinstance(step, PagedStep):
            raise ValueError("a paged layer cache needs a PagedStep (from PagedBatch.begin)")
        b, h_kv, t, hd = k.shape
        new_keys = k.transpose(1, 2).reshape(b * t, h_kv, hd)  # (b * t, h_kv, hd), row by row
        new_values = v.transpose(1, 2).reshape(b * t, h_kv, v.shape[-1])  # (b * t, h_kv, hd)
        self.cache.write(self.layer, step.slots, new_keys, new_values)
        pages = PagedKV(self.cache.key_pages[self.layer], self.cache.value_pages[self.layer], step.block_table,
                        step.kv_lens)  # fmt: skip
        return attend(q, None, None, paged=pages)  # (b, h, t, hd)

    @property
    def nbytes(self) -> int:
        return self.cache.key_pages[self.layer].nbytes + self.cache.value_pages[self.layer].nbytes


class PagedBatch:
    """The cache argument of ``Decoder.forward`` for the rows ``seq_ids`` of a paged cache, whose new tokens
    were given slots (``slots``, from ``PagedKVCache.append_slots``) after ``starts`` tokens each."""

    def __init__(self, cache: PagedKVCache, seq_ids: Sequence[Hashable], starts: Sequence[int], slots: torch.Tensor):
        self.cache = cache
        self.seq_ids = list(seq_ids)
        self.layers = [PagedLayerCache(cache, layer) for layer in range(cache.num_layers)]
        self.starts = torch.tensor(list(starts), dtype=torch.int64, device=cache.device)  # (b,)
        self.slots = slots

    def begin(self, batch: int, num_new: int, input_lens: torch.Tensor | None) -> PagedStep:
        if batch != len(self.seq_ids):
            raise ValueError(f"the paged batch has {len(self.seq_ids)} rows; got input with {batch} rows")
        if input_lens is not None:
            raise ValueError("a paged batch runs rows of equal new-token counts (no input_lens)")
        if self.slots.shape != (batch * num_new,):
            raise ValueError(f"{self.slots.shape[0]} slots were given for {batch} rows of {num_new} new tokens")
        positions = self.starts[:, None] + torch.arange(num_new, device=self.starts.device)  # (b, t)
        return PagedStep(
            positions=positions,
            kv_lens=self.starts + num_new,
            start=None,
            empty=False,
            input_lens=None,
            slots=self.slots,
            block_table=self.cache.block_table_tensor(self.seq_ids),
        )

    def finish(self, step: PagedStep) -> None:
        """Nothing to do: the pool tracks lengths (``append_slots``) and writes (``mark_written``)."""
