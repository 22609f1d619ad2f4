"""One generation request inside the engine: its prompt, its own sampling options, what it has produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..gpt.options import GenerationOptions

__all__ = ["Request"]


@dataclass
class Request:
    """Request ``request_id``: continue ``prompt`` under ``options``; ``output`` grows by one token per step."""

    request_id: int
    prompt: list[int]
    options: GenerationOptions
    eos_ids: frozenset[int]
    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)
    finished: bool = False

    @property
    def max_tokens(self) -> int:
        """Tokens the request may hold in the cache at most: its prompt and every new token but the last
        (the last one is sampled, never fed back)."""
        return len(self.prompt) + max(self.options.max_new_tokens - 1, 0)

    def add(self, token: int) -> None:
        """Record a new token; the request finishes at an end token or at ``max_new_tokens``."""
        self.output.append(token)
        if token in self.eos_ids or len(self.output) >= self.options.max_new_tokens:
            self.finished = True
