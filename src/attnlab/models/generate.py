"""Generation for :class:`~attnlab.models.decoder.Decoder`: a batch of prompts of any lengths, one options object.

``generate(model, prompts, options)`` takes a list of token-id lists (or a 2-D tensor, left-padded as
Hugging Face's ``generate`` expects, with its ``attention_mask``) and returns each prompt's new tokens.
Internally prompts are right-padded: their real tokens then sit at positions 0..len-1, exactly as when each
row runs alone, and after the prompt every row writes and reads its own positions in the cache (the
backends' ``kv_lens``). Rows stop at an end-of-sequence token (``options.eos_id``, else the checkpoint's).

``compile=True`` builds a static cache (fixed shapes at every step) and compiles the one-token decode step
with ``torch.compile`` (``mode="reduce-overhead"``, CUDA graphs, on CUDA); the first call's compile time is
reported apart from the decoding time in :class:`GenerationStats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..backends import BACKENDS, backends_with
from ..gpt.generate import sample_next_token
from ..gpt.options import GenerationOptions
from .decoder import Decoder

__all__ = ["GenerationStats", "generate", "iter_generate", "prompts_from_padded"]


@dataclass
class GenerationStats:
    """Where the time of one :func:`generate` call went (seconds) and how many tokens each phase made."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    compile_s: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


def prompts_from_padded(idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Token-id lists from a (b, t) tensor, dropping the positions where ``attention_mask`` is 0 (padding)."""
    if idx.dim() != 2:
        raise ValueError(f"prompt ids must be (batch, tokens), got shape {tuple(idx.shape)}")
    if attention_mask is None:
        return idx.tolist()
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; the ids have {tuple(idx.shape)}")
    return [row[mask.bool()].tolist() for row, mask in zip(idx, attention_mask, strict=True)]


def _check(model: Decoder, prompts: Sequence[Sequence[int]], options: GenerationOptions) -> None:
    if not isinstance(options, GenerationOptions):
        raise ValueError(f"options must be a GenerationOptions, got {type(options).__name__}")
    if len(prompts) == 0:
        raise ValueError("no prompts: give at least one list of token ids")
    vocab = model.config.vocab_size
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        bad = [
            token for token in prompt if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocab
        ]
        if bad:
            raise ValueError(f"prompt {i} holds token {bad[0]!r}, outside the vocabulary [0, {vocab})")
    longest = max(len(prompt) for prompt in prompts)
    if longest + options.max_new_tokens > model.config.context_length:
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus max_new_tokens {options.max_new_tokens} exceeds the "
            f"model's context_length {model.config.context_length}"
        )


def _right_padded(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(prompt) for prompt in prompts)
    idx = torch.zeros(len(prompts), longest, dtype=torch.int64)  # (b, longest); 0 pads, never attended
    for i, prompt in enumerate(prompts):
        idx[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.int64)
    lens = torch.tensor([len(prompt) for prompt in prompts], dtype=torch.int64)  # (b,)
    return idx.to(device), lens.to(device)


def iter_generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    options: GenerationOptions,
    *,
    compile: bool = False,
    stats: GenerationStats | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each step's new token of every row, (b,) on the model's device, ``options.max_new_tokens`` times
    at most (fewer once every row has ended). Rows that ended keep yielding their end token."""
    _check(model, prompts, options)
    lengths = {len(prompt) for prompt in prompts}
    if options.use_cache and (len(lengths) > 1 or compile) and "kv_lens" not in BACKENDS[model.attn_impl].features:
        need = "prompts of different lengths" if len(lengths) > 1 else "compile=True (a static cache)"
        raise ValueError(
            f"{need} read the cache with per-row lengths (kv_lens), which the {model.attn_impl} backend does not do; "
            f"use one of: {', '.join(backends_with('kv_lens'))}"
        )
    stats = GenerationStats() if stats is None else stats
    device = model.tok_emb.weight.device
    idx, lens = _right_padded(prompts, device)
    b = idx.shape[0]
    rows = torch.arange(b, device=device)
    ragged = bool((lens != lens[0]).any())
    eos = [options.eos_id] if options.eos_id is not None else list(getattr(model, "eos_token_ids", ()))
    eos_ids = torch.tensor(eos, dtype=torch.int64, device=device)
    generator = options.make_generator(device) if options.temperature > 0 else None
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    stats.prompt_tokens = int(lens.sum())
    if options.max_new_tokens == 0:
        return
    with torch.no_grad():
        start = time.perf_counter()
        if options.use_cache:
            cache = model.new_cache(b, idx.shape[1] + options.max_new_tokens, static=compile)
            logits = model(idx, cache, input_lens=lens if ragged else None)  # (b, longest, vocab)
            step_fn: Callable[[torch.Tensor], torch.Tensor] = lambda token: model(token, cache)[:, -1]  # noqa: E731
            if compile:
                mode = "reduce-overhead" if device.type == "cuda" else None
                step_fn = torch.compile(step_fn, mode=mode, dynamic=False)
        else:
            logits = model(idx)  # (b, longest, vocab): right padding sits after every real token
            sequences = [list(prompt) for prompt in prompts]
        next_logits = logits[rows, lens - 1]  # (b, vocab): each row's last real token
        stats.prefill_s = time.perf_counter() - start
        for step in range(options.max_new_tokens):
            token = sample_next_token(next_logits, options.temperature, options.top_k, generator)  # (b,)
            stats.new_tokens += int((~finished).sum())  # rows that ended earlier make no new token
            if eos_ids.numel():
                token = torch.where(finished, eos_ids[0], token)  # (b,)
                finished |= torch.isin(token, eos_ids)
            yield token
            if step == options.max_new_tokens - 1 or bool(finished.all()):
                break
            tick = time.perf_counter()
            if options.use_cache:
                next_logits = step_fn(token[:, None])  # (b, vocab)
            else:
                for i, sequence in enumerate(sequences):
                    sequence.append(int(token[i]))
                idx, lens = _right_padded(sequences, device)
                next_logits = model(idx)[rows, lens - 1]  # (b, vocab)
            elapsed = time.perf_counter() - tick
            if compile and step == 0:
                stats.compile_s = elapsed  # the first compiled call traces and compiles
            else:
                stats.decode_s += elapsed
                stats.steps.append(elapsed)


def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    options: GenerationOptions | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    compile: bool = False,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """Each prompt's new tokens (a list per prompt, ending at its end-of-sequence token if one came)."""
    options = GenerationOptions() if options is None else options
    if isinstance(prompts, torch.Tensor):
        prompts = prompts_from_padded(prompts, attention_mask)
    elif attention_mask is not None:
        raise ValueError("attention_mask goes with a tensor of padded prompts, not with lists of token ids")
    eos = {options.eos_id} if options.eos_id is not None else set(getattr(model, "eos_token_ids", ()))
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for token in iter_generate(model, prompts, options, compile=compile, stats=stats):
        for i, value in enumerate(token.tolist()):
            if not done[i]:
                outputs[i].append(value)
                done[i] = value in eos
    return outputs
