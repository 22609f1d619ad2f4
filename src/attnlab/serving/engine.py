"""A small serving engine: many requests share one paged KV cache and one running batch (continuous batching).

``Engine(model, block_size=16, num_blocks=N, max_batch=B)`` owns a :class:`~.paged_cache.PagedKVCache` for
``model`` (an :class:`attnlab.models.Decoder`). Each :meth:`Engine.step`:

1. **admits** waiting requests, oldest first, while the batch has room (``max_batch``) and the pool has the
   blocks the request may need until it ends (its prompt plus ``max_new_tokens``, minus what it can share),
   reserved so that running requests never run out: a request that does not fit *waits*;
2. **prefills** each admitted request: the prompt tokens not found in the prefix cache (blocks of an identical
   earlier prompt prefix are shared, stored once) are computed, and the first new token sampled;
3. **decodes** one token for every request that was already running, all rows in one forward pass, each at its
   own position, with its own sampling options;
4. **retires** finished requests (end token or ``max_new_tokens``): their blocks return to the pool.

:meth:`Engine.generate` runs prompts to completion and returns each one's new tokens in order;
:meth:`Engine.stream` yields ``(index, token)`` as tokens are made.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from ..backends import BACKENDS, backends_with
from ..gpt.generate import sample_next_token
from ..gpt.options import GenerationOptions
from ..models.paged import PagedBatch
from ..validate import check_positive_int
from .paged_cache import PagedKVCache
from .request import Request

if TYPE_CHECKING:
    from ..models.decoder import Decoder

__all__ = ["ENGINE_BACKEND", "Engine"]

#: The backend to serve with when none is named: it reads pages directly and does every attention feature.
ENGINE_BACKEND = "flash_torch"


class Engine:
    """Continuous batching over a paged KV cache for ``model`` (see the module docstring)."""

    def __init__(self, model: Decoder, *, block_size: int = 16, num_blocks: int | None = None, max_batch: int = 16):
        from ..models.decoder import Decoder

        if not isinstance(model, Decoder):
            raise ValueError(f"model must be an attnlab.models.Decoder, got {type(model).__name__}")
        config = model.config
        if config.mla is not None:
            raise ValueError("the engine pages key/value caches; multi-head latent attention (mla) caches a latent")
        backend = BACKENDS[model.attn_impl]
        if backend.paged is None and "kv_lens" not in backend.features:
            raise ValueError(
                f"the {model.attn_impl} backend can read neither pages nor per-row lengths (kv_lens); serve with one "
                f"of: {', '.join(sorted(set(backends_with('paged')) | set(backends_with('kv_lens'))))}"
            )
        self.model = model.eval()
        check_positive_int("block_size", block_size)
        check_positive_int("max_batch", max_batch)
        self.block_size, self.max_batch = block_size, max_batch
        blocks_per_sequence = math.ceil(config.context_length / self.block_size)
        num_blocks = max_batch * blocks_per_sequence if num_blocks is None else num_blocks
        check_positive_int("num_blocks", num_blocks)
        self.num_blocks = num_blocks
        weight = model.tok_emb.weight
        self.device = weight.device
        self.cache = PagedKVCache(
            config.n_layers, self.num_blocks, self.block_size, config.num_kv_heads, config.head_dim,
            dtype=weight.dtype, device=weight.device,
        )  # fmt: skip
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[int, Request] = {}
        self._next_id = 0
        self.steps = 0

    # -- requests -----------------------------------------------------------------------------------

    def _blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def add_request(self, prompt: Sequence[int], options: GenerationOptions | None = None) -> int:
        """Queue ``prompt`` (token ids) under ``options``; returns the request's id. ``ValueError`` now if it could
        never run (bad tokens, longer than the context, more blocks than the whole pool)."""
        options = GenerationOptions() if options is None else options
        if not isinstance(options, GenerationOptions):
            raise ValueError(f"options must be a GenerationOptions, got {type(options).__name__}")
        prompt = list(prompt)
        vocab, context = self.model.config.vocab_size, self.model.config.context_length
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        bad = [t for t in prompt if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token {bad[0]!r} is outside the vocabulary [0, {vocab})")
        if options.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1 for an engine request")
        if len(prompt) + options.max_new_tokens > context:
            raise ValueError(
                f"prompt of {len(prompt)} tokens plus max_new_tokens {options.max_new_tokens} exceeds the "
                f"context_length {context}"
            )
        eos = {options.eos_id} if options.eos_id is not None else set(self.model.eos_token_ids)
        request = Request(self._next_id, prompt, options, frozenset(eos))
        if self._blocks_for(request.max_tokens) > self.num_blocks:
            raise ValueError(
                f"request needs {self._blocks_for(request.max_tokens)} blocks of {self.block_size} tokens; the pool "
                f"has only {self.num_blocks}"
            )
        if options.temperature > 0:
            request.generator = options.make_generator(self.device)
        self._next_id += 1
        self.requests[request.request_id] = request
        self.waiting.append(request)
        return request.request_id

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------------------------

    def _reserved_blocks(self) -> int:
        """Blocks the running requests may still take before they end."""
        return sum(
            max(self._blocks_for(r.max_tokens) - len(self.cache.block_ids(r.request_id)), 0) for r in self.running
        )

    def _sample(self, request: Request, logits: torch.Tensor) -> int:
        options = request.options
        token = sample_next_token(logits[None], options.temperature, options.top_k, request.generator)  # (1,)
        return int(token[0])

    def _forward(self, requests: list[Request], tokens: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """Logits (b, t, vocab) of ``tokens`` (b, t) for ``requests`` whose caches hold ``starts`` tokens."""
        ids = [r.request_id for r in requests]
        slots = self.cache.append_slots(ids, tokens.shape[1])  # (b * t,)
        logits = self.model(tokens, PagedBatch(self.cache, ids, starts, slots))  # (b, t, vocab)
        self.cache.mark_written(ids)  # their full prompt blocks may now be shared
        return logits

    def _admit(self) -> list[Request]:
        admitted = []
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            request = self.waiting[0]
            free = self.cache.pool.num_free - self._reserved_blocks()
            if self._blocks_for(request.max_tokens) > free:  # conservative: as if nothing were shared
                break  # it waits (first come, first served: no overtaking)
            self.waiting.popleft()
            self.running.append(request)  # counted in _reserved_blocks from now on
            admitted.append(request)
            cached = self.cache.add_sequence(request.request_id, request.prompt)
            tokens = torch.tensor([request.prompt[cached:]], dtype=torch.int64, device=self.device)  # (1, t)
            logits = self._forward([request], tokens, [cached])  # (1, t, vocab)
            request.add(self._sample(request, logits[0, -1]))
        return admitted

    def step(self) -> list[tuple[int, int]]:
        """Admit, prefill, decode one token for every running request, retire the finished.
        Returns the ``(request_id, token)`` pairs made in this step."""
        made: list[tuple[int, int]] = []
        with torch.no_grad():
            decoding = [r for r in self.running if not r.finished]
            admitted = self._admit()
            made += [(r.request_id, r.output[-1]) for r in admitted]
            if decoding:
                ids = [r.request_id for r in decoding]
                starts = [self.cache.length(i) for i in ids]
                tokens = torch.tensor([[r.output[-1]] for r in decoding], dtype=torch.int64, device=self.device)
                logits = self._forward(decoding, tokens, starts)  # (b, 1, vocab)
                for row, request in enumerate(decoding):
                    request.add(self._sample(request, logits[row, -1]))
                    made.append((request.request_id, request.output[-1]))
        for request in [r for r in self.running if r.finished]:
            self.cache.free_sequence(request.request_id)
            self.running.remove(request)
        self.steps += 1
        return made

    # -- whole runs ---------------------------------------------------------------------------------

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        options: GenerationOptions | Sequence[GenerationOptions] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> Iterator[tuple[int, int]]:
        """Run ``prompts`` (with one options object, or one per prompt) and yield ``(prompt index, token)`` as
        tokens are made. ``max_new_tokens`` overrides the options' value."""
        option_list = self._options(prompts, options, max_new_tokens)
        ids = [self.add_request(prompt, opts) for prompt, opts in zip(prompts, option_list, strict=True)]
        index = {request_id: i for i, request_id in enumerate(ids)}
        while any(not self.requests[i].finished for i in ids):
            for request_id, token in self.step():
                if request_id in index:
                    yield index[request_id], token

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        options: GenerationOptions | Sequence[GenerationOptions] | None = None,
        *,
        max_new_tokens: int | None = None,
    ) -> list[list[int]]:
        """Each prompt's new tokens, in the order of ``prompts``."""
        outputs: list[list[int]] = [[] for _ in prompts]
        for i, token in self.stream(prompts, options, max_new_tokens=max_new_tokens):
            outputs[i].append(token)
        return outputs

    @staticmethod
    def _options(
        prompts: Sequence[Sequence[int]],
        options: GenerationOptions | Sequence[GenerationOptions] | None,
        max_new_tokens: int | None,
    ) -> list[GenerationOptions]:
        if options is None or isinstance(options, GenerationOptions):
            base = options if options is not None else GenerationOptions()
            option_list = [base] * len(prompts)
        else:
            option_list = list(options)
            if len(option_list) != len(prompts):
                raise ValueError(f"{len(option_list)} options for {len(prompts)} prompts; give one per prompt")
        if max_new_tokens is not None:
            from dataclasses import replace

            option_list = [replace(opts, max_new_tokens=max_new_tokens) for opts in option_list]
        return option_list
