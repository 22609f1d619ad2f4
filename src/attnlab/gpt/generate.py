"""Autoregressive generation: greedy or sampled, with or without a KV cache, streaming token by token.

With the cache, the prompt is processed once (prefill) and each later step feeds only the newest
token, which attends the cached keys and values. Without it, every step reruns the whole sequence:
the same tokens, at a cost growing with the length. The prompt plus the new tokens must fit in the
model's context: past it this raises rather than silently sliding the window (a sliding window would
change the model's answer, and GPT-2 has no positions beyond ``context_length``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .kv_cache import check_kv_cache_support
from .model import GPTModel
from .options import GenerationOptions

__all__ = ["generate", "iter_generate", "sample_next_token"]


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (b, vocab): argmax when ``temperature`` is 0, else a sample from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens. Returns (b,)."""
    GenerationOptions(temperature=temperature, top_k=top_k)  # validates both
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # (b,)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))  # (b, vocab)
    # Shifted so the best logit is 0 before dividing: a tiny temperature then sends the others to -inf
    # (probability 0), never the best one to +inf (a NaN probability). float64 for the division.
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)  # (b, vocab)
    probs = torch.softmax(shifted / temperature, dim=-1)  # (b, vocab)
    try:
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (b,)
    except RuntimeError as error:  # NaN logits (e.g. an overflowing model) make no distribution
        raise ValueError(f"cannot sample: the logits hold NaN or infinite values ({error})") from error


def _check_arguments(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    use_cache: bool,
) -> None:
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (batch, tokens) with at least one token, got shape {tuple(idx.shape)}")
    GenerationOptions(max_new_tokens, temperature, top_k, eos_id, use_cache)  # validates each value
    total = idx.shape[1] + max_new_tokens
    if total > model.config.context_length:
        raise ValueError(
            f"prompt length {idx.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"context_length {model.config.context_length}"
        )
    vocab_size = model.config.vocab_size
    if eos_id is not None and eos_id >= vocab_size:
        raise ValueError(f"eos_id must be a token id in [0, {vocab_size}), got {eos_id!r}")
    if use_cache:
        check_kv_cache_support(model.attn_impl)


def iter_generate(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """An iterator over each step's new tokens, (b,) each, produced as they are chosen.

    Arguments are checked here, at the call, not at the first step. A row that has produced ``eos_id``
    keeps producing ``eos_id`` (so rows stay aligned); generation stops once every row has. The model's
    train/eval mode is left as it is (call ``eval()`` for deterministic output).
    """
    _check_arguments(model, idx, max_new_tokens, temperature, top_k, eos_id, use_cache)
    return _steps(model, idx, max_new_tokens, temperature, top_k, eos_id, use_cache, generator)


@torch.no_grad()
def _steps(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | None,
    use_cache: bool,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    if max_new_tokens == 0:
        return
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (b,)
    cache = model.new_kv_cache(idx.shape[1] + max_new_tokens) if use_cache else None
    sequence = idx  # (b, t), grows by one column per step when there is no cache
    logits = model(idx, cache)[:, -1]  # (b, vocab): prefill
    for step in range(max_new_tokens):
        next_token = sample_next_token(logits, temperature, top_k, generator)  # (b,)
        if eos_id is not None:
            next_token = next_token.masked_fill(finished, eos_id)
            finished |= next_token == eos_id
        yield next_token
        # (finished.all() syncs with the device, so it is only asked when there is an eos to stop at)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            return
        if cache is not None:
            logits = model(next_token[:, None], cache)[:, -1]  # (b, vocab): the new token only
        else:
            sequence = torch.cat([sequence, next_token[:, None]], dim=1)  # (b, t + step + 1)
            logits = model(sequence)[:, -1]  # (b, vocab): the whole sequence again


def generate(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``idx`` (b, t) followed by the generated tokens: (b, t + new), new <= max_new_tokens (fewer only
    when every row reached ``eos_id``). Greedy when ``temperature`` is 0. See :func:`iter_generate`."""
    new_tokens = list(
        iter_generate(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=eos_id,
            use_cache=use_cache,
            generator=generator,
        )
    )
    return torch.cat([idx, *(token[:, None] for token in new_tokens)], dim=1)  # (b, t + new)
