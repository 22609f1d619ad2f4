"""Serving-side memory: a paged KV cache (vLLM's PagedAttention) below any model.

- :mod:`.blocks`: :class:`BlockPool`, the free list and reference counts of the physical blocks (sharing,
  copy-on-write, a cache of freed prefix blocks);
- :mod:`.prefix`: naming full prompt blocks by a chained hash, so equal prefixes share blocks;
- :mod:`.paged_cache`: :class:`PagedKVCache`, per-layer page tensors plus block tables and lengths per
  sequence, what the paged attention functions (``Backend.attend_paged``) read;
- :mod:`.engine`: :class:`Engine`, continuous batching of many requests over that cache (:mod:`.request`).
"""

from .blocks import BlockPool
from .engine import ENGINE_BACKEND, Engine
from .paged_cache import PagedKVCache
from .prefix import full_block_keys

__all__ = ["ENGINE_BACKEND", "BlockPool", "Engine", "PagedKVCache", "full_block_keys"]
