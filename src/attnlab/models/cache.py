"""KV caches for the decoders: what each layer keeps of the past, and which of it a new query sees.

:class:`DecoderCache` holds one cache per layer plus each row's length (``lengths``, (b,)); a forward pass
through the model opens a :class:`CacheStep` (the new tokens' positions, the lengths after them), every
attention layer hands its new queries, keys and values to its layer cache, and the step is closed by
adding the new tokens to ``lengths``. The layer caches:

- :class:`FullLayerCache`: keys and values of every position, one preallocated ``(b, h_kv, max_tokens,
  head_dim)`` buffer each (``h_kv`` key/value heads: grouped-query attention shrinks the cache).
- :class:`RollingLayerCache`: a sliding-window layer (Mistral, Gemma 2/3, gpt-oss) never looks further back
  than ``window`` positions, so it keeps only ``window`` slots, written round-robin (position ``p`` in slot
  ``p % window``): memory is bounded however long generation runs. The order of the slots does not matter
  to a one-token step (softmax is a sum), and a longer step reads them back in position order first.

Rows of different lengths (a batch of prompts of different lengths, right-padded, or ``static`` mode,
whose shapes must not change between steps so that ``torch.compile`` traces the decode step once) are
written at per-row positions with ``scatter_`` and attended with the backend's ``kv_lens`` (row ``i`` sees
its first ``kv_lens[i]`` slots, queries aligned to its own end). Rows of one common length are plain slices.
The cache is for inference: it is written in place, so use it under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["CacheStep", "DecoderCache", "FullLayerCache", "LayerCache", "RollingLayerCache"]

#: ``attend(q, k, v, **spec_fields)``: the layer's attention backend with its spec, plus per-call fields.
AttendFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class CacheStep:
    """One forward pass through a cache: ``positions`` (b, t) of the new tokens; ``kv_lens`` (b,) the lengths
    after them; ``start`` the common length before them (None when rows differ or in static mode);
    ``empty``: nothing is cached yet (the new tokens attend only each other); ``input_lens`` (b,): how many of
    the t new tokens are real in each row (right padding), None when all are."""

    positions: torch.Tensor
    kv_lens: torch.Tensor
    start: int | None
    empty: bool
    input_lens: torch.Tensor | None

    @property
    def num_new(self) -> int:
        return self.positions.shape[1]


class LayerCache:
    """What every layer cache does: store this step's keys/values and attend the new queries to what it holds."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: CacheStep, attend: AttendFn):
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


class _SlotCache(LayerCache):
    """Keys and values in ``slots`` positions of one ``(b, h_kv, slots, hd)`` buffer each, allocated on the first
    step from the keys' shape, dtype and device."""

    def __init__(self, batch: int, slots: int, static: bool) -> None:
        self.batch = batch
        self.slots = slots
        self.static = static
        self.keys: torch.Tensor | None = None  # (b, h_kv, slots, hd)
        self.values: torch.Tensor | None = None  # (b, h_kv, slots, hd_v)

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.keys is None:
            b, h_kv, _, hd = k.shape
            self.keys = k.new_zeros(b, h_kv, self.slots, hd)  # (b, h_kv, slots, hd)
            self.values = v.new_zeros(b, h_kv, self.slots, v.shape[-1])  # (b, h_kv, slots, hd_v)

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


def _scatter_index(slots: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``slots`` (b, t) broadcast to the shape of ``like`` (b, h_kv, t, hd), for ``scatter_`` along dim 2."""
    b, h_kv, t, hd = like.shape
    return slots[:, None, :, None].expand(b, h_kv, t, hd)  # (b, h_kv, t, hd)


class FullLayerCache(_SlotCache):
    """Every position's keys and values, up to ``max_tokens``; allocated on the first step from the keys."""

    def __init__(self, batch: int, max_tokens: int, static: bool) -> None:
        super().__init__(batch, max_tokens, static)
        self.max_tokens = max_tokens

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: CacheStep, attend: AttendFn):
        self._allocate(k, v)
        t = step.num_new
        if step.empty:  # the prompt: its tokens attend each other; store them all (padding slots are never read)
            self.keys[:, :, :t] = k
            self.values[:, :, :t] = v
            return attend(q, k, v)  # (b, h, t, hd)
        if step.start is not None:  # one common length: the filled prefix is a slice, aligned bottom-right
            end = step.start + t
            self.keys[:, :, step.start : end] = k
            self.values[:, :, step.start : end] = v
            return attend(q, self.keys[:, :, :end], self.values[:, :, :end])  # (b, h, t, hd)
        # Rows of different lengths, or fixed shapes for torch.compile: write at each row's positions.
        self.keys.scatter_(2, _scatter_index(step.positions, k), k)
        self.values.scatter_(2, _scatter_index(step.positions, v), v)
        keys, values = self.keys, self.values
        if not self.static:  # eager: no need to read past the longest row
            longest = int(step.kv_lens.max())
            keys, values = keys[:, :, :longest], values[:, :, :longest]  # (b, h_kv, longest, hd)
        return attend(q, keys, values, kv_lens=step.kv_lens)  # (b, h, t, hd)


class RollingLayerCache(_SlotCache):
    """The last ``window`` positions' keys and values of a sliding-window layer, position ``p`` in slot
    ``p % window``. One extra slot (index ``window``) takes the writes of padding tokens, and is never read."""

    def __init__(self, batch: int, window: int, static: bool) -> None:
        super().__init__(batch, window + 1, static)
        self.window = window

    def _write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, row_ends: torch.Tensor) -> None:
        """Store the new keys/values of ``positions`` (b, t) that are among each row's last ``window`` positions
        before ``row_ends`` (b,); the others (older, or padding at or past the row's end) go to the spare slot."""
        keep = (positions < row_ends[:, None]) & (positions >= row_ends[:, None] - self.window)  # (b, t)
        slots = torch.where(keep, positions % self.window, self.window)  # (b, t)
        # Two kept tokens never share a slot (they are fewer than window apart); the spare slot may take several.
        self.keys.scatter_(2, _scatter_index(slots, k), k)
        self.values.scatter_(2, _scatter_index(slots, v), v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: CacheStep, attend: AttendFn):
        self._allocate(k, v)
        t = step.num_new
        if step.empty:  # the prompt attends itself (the layer's window applies), then its last positions are kept
            self._write(k, v, step.positions, step.kv_lens)
            return attend(q, k, v)  # (b, h, t, hd)
        if t == 1:  # decoding: the slots hold exactly the keys this query sees (its own among them, once written)
            self._write(k, v, step.positions, step.kv_lens)
            if step.start is not None and not self.static:
                filled = min(step.start + 1, self.window)
                return attend(q, self.keys[:, :, :filled], self.values[:, :, :filled])  # (b, h, 1, hd)
            kv_lens = step.kv_lens.clamp(max=self.window)  # (b,)
            return attend(q, self.keys[:, :, : self.window], self.values[:, :, : self.window], kv_lens=kv_lens)
        if step.start is None:
            raise ValueError(
                "a multi-token step on a sliding-window cache needs rows of one common length (not static mode); "
                f"got {t} new tokens with per-row lengths"
            )
        # Several new tokens: read the kept positions back in order, append the new ones, attend with the window.
        kept = min(step.start, self.window)
        old_positions = torch.arange(step.start - kept, step.start, device=k.device)  # (kept,)
        old_slots = old_positions % self.window  # (kept,)
        keys = torch.cat([self.keys[:, :, old_slots], k], dim=2)  # (b, h_kv, kept + t, hd)
        values = torch.cat([self.values[:, :, old_slots], v], dim=2)  # (b, h_kv, kept + t, hd)
        out = attend(q, keys, values)  # (b, h, t, hd): positions contiguous, aligned bottom-right
        self._write(k, v, step.positions, step.kv_lens)
        return out


class DecoderCache:
    """The caches of all layers of one batch, and each row's length so far (``lengths``, (b,) int64)."""

    def __init__(self, layers: Sequence[LayerCache], batch: int, max_tokens: int, device: torch.device, static: bool):
        self.layers = list(layers)
        self.batch = batch
        self.max_tokens = max_tokens
        self.static = static
        self.lengths = torch.zeros(batch, dtype=torch.int64, device=device)  # (b,)
        # The rows' length when they are all equal, in eager mode only: static mode keeps no Python-side length,
        # so that a compiled decode step sees nothing change between calls but tensors.
        self._common_length: int | None = None if static else 0
        self._empty = True

    @property
    def nbytes(self) -> int:
        """Bytes held by all layers' buffers (0 before the first step allocates them)."""
        return sum(layer.nbytes for layer in self.layers)

    def begin(self, batch: int, num_new: int, input_lens: torch.Tensor | None) -> CacheStep:
        """Open a step of ``num_new`` tokens per row (``input_lens`` (b,): real tokens per row, right padding)."""
        if batch != self.batch:
            raise ValueError(f"the cache holds a batch of {self.batch} rows; got input with {batch} rows")
        if input_lens is not None and not self._empty:
            raise ValueError("input_lens (right-padded prompts of different lengths) is only for the first step")
        if self._common_length is not None and self._common_length + num_new > self.max_tokens:
            raise ValueError(
                f"the cache holds {self._common_length} tokens; {num_new} more exceed its max_tokens {self.max_tokens}"
            )
        offsets = torch.arange(num_new, device=self.lengths.device)  # (t,)
        positions = self.lengths[:, None] + offsets  # (b, t)
        kv_lens = self.lengths + num_new if input_lens is None else input_lens  # (b,)
        if not self.static and self._common_length is None and int(kv_lens.max()) > self.max_tokens:
            raise ValueError(f"a row reaches {int(kv_lens.max())} tokens; the cache's max_tokens is {self.max_tokens}")
        start = None if self.static else self._common_length
        return CacheStep(positions=positions, kv_lens=kv_lens, start=start, empty=self._empty, input_lens=input_lens)

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on, in every row (each then holds ``length`` tokens), e.g. to
        decode again from the same prompt. Only full-attention layers can: a rolling layer has overwritten the
        slots of the positions it would need again."""
        if any(not isinstance(layer, FullLayerCache) for layer in self.layers):
            raise ValueError("only a cache of full-attention layers can rewind (rolling layers overwrite old slots)")
        held = int(self.lengths.min())
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= held:
            raise ValueError(f"cannot rewind a cache whose shortest row holds {held} tokens to {length!r}")
        self.lengths.fill_(length)
        if not self.static:
            self._common_length = length
        self._empty = length == 0

    def finish(self, step: CacheStep) -> None:
        """Close ``step``: its tokens are now part of every row."""
        self.lengths.copy_(step.kv_lens)
        if step.input_lens is not None:
            self._common_length = None  # rows of different lengths from now on
        elif self._common_length is not None:
            self._common_length += step.num_new
        self._empty = False
