"""A paged KV cache: per-layer page tensors from one :class:`BlockPool`, and a block table per sequence.

Every layer holds ``key_pages`` and ``value_pages`` of shape ``(num_blocks, h_kv, block_size, head_dim)``:
physical block ``n`` of every layer belongs to the same sequence, so one block table serves all layers.
A sequence's token ``p`` lives in *slot* ``block_table[p // block_size] * block_size + p % block_size``.

One decoding step of an engine, for the sequences ``ids`` it runs::

    slots = cache.append_slots(ids, 1)                    # (b,) slots of the new tokens (may copy-on-write)
    for layer in range(num_layers):
        ...                                               # q (b, h, 1, hd), k/v of the new token (b, h_kv, 1, hd)
        cache.write(layer, slots, k[:, :, 0], v[:, :, 0])  # (b, h_kv, hd) each
        out = backend.attend_paged(q, cache.key_pages[layer], cache.value_pages[layer],
                                   cache.block_table_tensor(ids), cache.kv_lens(ids), spec)

A new request starts with :meth:`add_sequence`, which reuses the blocks of a prompt prefix already in the
cache and returns how many prompt tokens it covers; the engine then asks :meth:`append_slots` for the rest of
the prompt and computes only those. Full prompt blocks become shareable once their slots are written: at the
sequence's next :meth:`append_slots` or at :meth:`mark_written`. The prefix reused is never the whole prompt:
the last prompt token is always computed (its logits give the first new token), so a sequence never writes
into a block it found in the cache. Writes into shared blocks come from :meth:`fork` (parallel sampling):
the first token either sequence appends to their shared partial block gets a private copy (copy-on-write).

Bad ids and sizes raise ``ValueError``; so does running out of blocks, but :meth:`can_allocate` and
:meth:`can_append` say beforehand whether there is room, so an engine can wait (or preempt) instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from .blocks import BlockPool
from .prefix import BlockKey, full_block_keys

__all__ = ["PagedKVCache"]


def _cdiv(a: int, b: int) -> int:
    return -(a // -b)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _SequenceState:
    """One sequence: its blocks in order, its length in tokens, and its prompt's full-block keys."""

    blocks: list[int]
    length: int
    prompt_keys: list[tuple[int, BlockKey]] = field(default_factory=list)
    published: int = 0  # leading prompt blocks registered in the pool's prefix cache


class PagedKVCache:
    """Keys and values of many sequences in ``num_blocks`` blocks of ``block_size`` slots, for every layer.

    ``key_pages[layer]`` and ``value_pages[layer]`` are ``(num_blocks, h_kv, block_size, head_dim)`` tensors,
    zero-initialised. Sequence ids are any hashable values (ints, strings). ``shared_blocks`` counts the blocks
    new sequences reused from the prefix cache; ``copied_blocks`` counts copy-on-write copies.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        h_kv: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        for name, value in (("num_layers", num_layers), ("h_kv", h_kv), ("head_dim", head_dim)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.pool = BlockPool(num_blocks, block_size)
        self.num_layers, self.block_size, self.h_kv, self.head_dim = num_layers, block_size, h_kv, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        shape = (num_blocks, h_kv, block_size, head_dim)
        self.key_pages = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.value_pages = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._sequences: dict[Hashable, _SequenceState] = {}
        self.shared_blocks = 0
        self.copied_blocks = 0

    # -- sequences --------------------------------------------------------------------------------------

    def add_sequence(self, seq_id: Hashable, prompt_token_ids: Sequence[int]) -> int:
        """Start sequence ``seq_id``; returns how many prompt tokens are already cached (shared prefix).

        The returned count is a multiple of ``block_size`` and at most ``len(prompt) - 1``; the caller computes
        the remaining prompt tokens (slots from :meth:`append_slots`). Nothing is allocated here.
        """
        if seq_id in self._sequences:
            raise ValueError(f"sequence {seq_id!r} already exists")
        prompt = list(prompt_token_ids)
        if not prompt or not all(_is_int(token) for token in prompt):
            raise ValueError(f"prompt_token_ids must be a non-empty sequence of ints, got {prompt_token_ids!r}")
        keys = full_block_keys(prompt, self.block_size)
        blocks: list[int] = []
        # The last prompt token is always computed, so only blocks of prompt[:-1] may be reused.
        for _, key in keys[: (len(prompt) - 1) // self.block_size]:
            block = self.pool.lookup(key)
            if block is None:
                break
            blocks.append(block)
        self.shared_blocks += len(blocks)
        length = len(blocks) * self.block_size
        self._sequences[seq_id] = _SequenceState(blocks, length, keys, published=len(blocks))
        return length

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Start ``child_id`` as a copy of ``parent_id`` that shares all its blocks (copy-on-write later)."""
        parent = self._get(parent_id)
        if child_id in self._sequences:
            raise ValueError(f"sequence {child_id!r} already exists")
        blocks = [self.pool.share(block) for block in parent.blocks]
        self._sequences[child_id] = _SequenceState(blocks, parent.length, parent.prompt_keys, parent.published)

    def free_sequence(self, seq_id: Hashable) -> None:
        """Drop ``seq_id``: each of its blocks loses a holder and returns to the pool at zero."""
        state = self._get(seq_id)
        for block in state.blocks:
            self.pool.free(block)
        del self._sequences[seq_id]

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._sequences

    def length(self, seq_id: Hashable) -> int:
        """Tokens of ``seq_id`` with a slot (cached, or handed out by :meth:`append_slots`)."""
        return self._get(seq_id).length

    def block_ids(self, seq_id: Hashable) -> list[int]:
        """The physical blocks of ``seq_id``, in order (a copy)."""
        return list(self._get(seq_id).blocks)

    # -- room -------------------------------------------------------------------------------------------

    def can_allocate(self, num_tokens: int) -> bool:
        """Whether a new sequence of ``num_tokens`` tokens fits now (assuming no prefix is shared)."""
        if not _is_int(num_tokens) or num_tokens < 0:
            raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
        return self.pool.can_allocate(_cdiv(num_tokens, self.block_size))

    def blocks_needed(self, seq_ids: Sequence[Hashable], num_new: int | Sequence[int]) -> int:
        """Free blocks :meth:`append_slots` would take for these arguments (new blocks and copies)."""
        return sum(self._blocks_needed(state, n) for state, n in self._plan(seq_ids, num_new))

    def can_append(self, seq_ids: Sequence[Hashable], num_new: int | Sequence[int]) -> bool:
        """Whether :meth:`append_slots` with these arguments would find enough free blocks."""
        return self.pool.can_allocate(self.blocks_needed(seq_ids, num_new))

    # -- slots ------------------------------------------------------------------------------------------

    def append_slots(self, seq_ids: Sequence[Hashable], num_new: int | Sequence[int]) -> torch.Tensor:
        """Give each sequence ``num_new`` more token slots; returns their slot indices, int64 ``(sum(num_new),)``.

        ``num_new``: one count for all, or one per sequence. The slots are in order: sequence by sequence,
        token by token (with one count ``n``, ``slots.view(len(seq_ids), n)``). A shared partial last block is
        copied first (copy-on-write). All or nothing: without enough free blocks, ``ValueError`` and no change.
        """
        plan = self._plan(seq_ids, num_new)
        needed = sum(self._blocks_needed(state, n) for state, n in plan)
        if not self.pool.can_allocate(needed):
            raise ValueError(
                f"the block pool is exhausted: these sequences need {needed} more blocks, {self.pool.num_free} "
                "are free (ask can_append first to wait instead)"
            )
        slots: list[int] = []
        for state, n in plan:
            self._publish(state, state.length)  # slots handed out earlier are written by now
            if n == 0:
                continue
            if state.length % self.block_size:  # the last block is partly filled: make it ours alone
                self._ensure_last_block_writable(state)
            for _ in range(_cdiv(state.length + n, self.block_size) - len(state.blocks)):
                state.blocks.append(self.pool.allocate())
            for position in range(state.length, state.length + n):
                block = state.blocks[position // self.block_size]
                slots.append(block * self.block_size + position % self.block_size)
            state.length += n
        return torch.tensor(slots, dtype=torch.int64, device=self.device)

    def mark_written(self, seq_ids: Sequence[Hashable]) -> None:
        """Declare every slot handed out so far written: the sequences' full prompt blocks become shareable."""
        for seq_id in self._unique(seq_ids):
            state = self._sequences[seq_id]
            self._publish(state, state.length)

    # -- data -------------------------------------------------------------------------------------------

    def write(self, layer: int, slot_mapping: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``keys``, ``values`` (n, h_kv, head_dim) of layer ``layer`` into the slots ``slot_mapping`` (n,)."""
        if not _is_int(layer) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        if (
            not isinstance(slot_mapping, torch.Tensor)
            or slot_mapping.dim() != 1
            or slot_mapping.dtype not in (torch.int32, torch.int64)
        ):
            raise ValueError(f"slot_mapping must be a 1-D int32/int64 tensor, got {slot_mapping!r}")
        n = slot_mapping.shape[0]
        shape = (n, self.h_kv, self.head_dim)
        for name, tensor in (("keys", keys), ("values", values)):
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{name} must have shape {shape} (tokens, h_kv, head_dim), got {got}")
            if tensor.dtype != self.dtype or tensor.device != self.device:
                raise ValueError(f"{name} must be {self.dtype} on {self.device}, got {tensor.dtype} on {tensor.device}")
        if slot_mapping.device != self.device:
            raise ValueError(f"slot_mapping is on {slot_mapping.device}, the cache on {self.device}")
        if n == 0:
            return
        capacity = self.pool.num_blocks * self.block_size
        low, high = (int(x) for x in torch.aminmax(slot_mapping))
        if low < 0 or high >= capacity:
            raise ValueError(f"slot_mapping holds slots in [{low}, {high}], outside [0, {capacity})")
        blocks, offsets = slot_mapping // self.block_size, slot_mapping % self.block_size  # (n,) each
        self.key_pages[layer][blocks, :, offsets] = keys  # indexed view: (n, h_kv, head_dim)
        self.value_pages[layer][blocks, :, offsets] = values

    def block_table_tensor(self, seq_ids: Sequence[Hashable], width: int | None = None) -> torch.Tensor:
        """int32 ``(b, width)`` block tables (``width``: the longest table by default), padded with block 0.

        Padding entries are never read: attention reads only the blocks that hold a row's ``kv_lens`` tokens.
        """
        states = [self._sequences[seq_id] for seq_id in self._unique(seq_ids)]
        longest = max((len(state.blocks) for state in states), default=0)
        width = longest if width is None else width
        if not _is_int(width) or width < longest:
            raise ValueError(f"width must be an int >= {longest} (the longest block table), got {width!r}")
        rows = [state.blocks + [0] * (width - len(state.blocks)) for state in states]
        return torch.tensor(rows, dtype=torch.int32, device=self.device).view(len(states), width)  # (b, width)

    def kv_lens(self, seq_ids: Sequence[Hashable]) -> torch.Tensor:
        """int32 ``(b,)``: each sequence's tokens with a slot (the ``kv_lens`` of paged attention)."""
        lengths = [self._sequences[seq_id].length for seq_id in self._unique(seq_ids)]
        return torch.tensor(lengths, dtype=torch.int32, device=self.device)  # (b,)

    def gather(self, layer: int, seq_ids: Sequence[Hashable]) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous copies ``(keys, values)``, each (b, h_kv, max_len, head_dim), zero past each row's length.

        For backends without paged attention (with ``kv_lens``) and for tests; costs a copy of the cache.
        """
        if not _is_int(layer) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        table = self.block_table_tensor(seq_ids).long()  # (b, n_blocks)
        b, n_blocks = table.shape
        lengths = self.kv_lens(seq_ids).long()  # (b,)
        max_len = int(lengths.max()) if b else 0
        valid = torch.arange(n_blocks * self.block_size, device=self.device) < lengths[:, None]  # (b, n*bs)
        gathered = []
        for pages in (self.key_pages[layer], self.value_pages[layer]):
            x = pages[table]  # (b, n_blocks, h_kv, bs, hd)
            x = x.transpose(1, 2).reshape(b, self.h_kv, n_blocks * self.block_size, self.head_dim)  # (b, h_kv, t, hd)
            x = torch.where(valid[:, None, :, None], x, 0.0)  # zero the slots past each row's length
            gathered.append(x[:, :, :max_len])  # (b, h_kv, max_len, hd)
        return gathered[0], gathered[1]

    # -- helpers ----------------------------------------------------------------------------------------

    def _get(self, seq_id: Hashable) -> _SequenceState:
        try:
            return self._sequences[seq_id]
        except (KeyError, TypeError):
            raise ValueError(f"unknown sequence id {seq_id!r}") from None

    def _unique(self, seq_ids: Sequence[Hashable]) -> list[Hashable]:
        seq_ids = list(seq_ids)
        for seq_id in seq_ids:
            self._get(seq_id)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {seq_ids!r}")
        return seq_ids

    def _plan(self, seq_ids: Sequence[Hashable], num_new: int | Sequence[int]) -> list[tuple[_SequenceState, int]]:
        ids = self._unique(seq_ids)
        counts = [num_new] * len(ids) if _is_int(num_new) else list(num_new)
        if len(counts) != len(ids) or not all(_is_int(n) and n >= 0 for n in counts):
            raise ValueError(f"num_new must be an int >= 0 or one such int per sequence ({len(ids)}), got {num_new!r}")
        return [(self._sequences[seq_id], n) for seq_id, n in zip(ids, counts, strict=True)]

    def _blocks_needed(self, state: _SequenceState, n: int) -> int:
        fresh = _cdiv(state.length + n, self.block_size) - len(state.blocks)
        partial = state.length % self.block_size != 0
        copy = n > 0 and partial and self.pool.refcount(state.blocks[-1]) > 1
        return fresh + int(copy)

    def _ensure_last_block_writable(self, state: _SequenceState) -> None:
        last = state.blocks[-1]
        fresh = self.pool.ensure_writable(last)
        if fresh != last:  # copy-on-write: every layer's data of the shared block
            for pages in (*self.key_pages, *self.value_pages):
                pages[fresh].copy_(pages[last])
            state.blocks[-1] = fresh
            self.copied_blocks += 1

    def _publish(self, state: _SequenceState, written: int) -> None:
        """Register the full prompt blocks among the first ``written`` tokens in the pool's prefix cache."""
        full = min(written // self.block_size, len(state.prompt_keys))
        for index in range(state.published, full):
            self.pool.register(state.blocks[index], state.prompt_keys[index][1])
        state.published = max(state.published, full)
