"""The reference row of the decode benchmark: transformers' ``generate`` on the same checkpoint directory.

``generate`` runs the prompt and then one token per step against its own KV cache. Its time per decoded
token is measured as a difference: ``generate(new_tokens + 1)`` minus ``generate(1)`` (prompt plus its
first token in both), over ``new_tokens`` -- the same steps, against the same cache lengths, that the
attnlab rows time directly. Greedy, no sampling, transformers' default attention (``sdpa``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..gpt.hf_random import quiet_transformers
from .timing import Timing, time_callable

__all__ = ["GenerateReference"]


class GenerateReference:
    """``AutoModelForCausalLM`` loaded from ``directory`` in ``dtype`` on ``device``, in eval mode."""

    name = "transformers generate"

    def __init__(self, directory: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        try:
            from transformers import AutoModelForCausalLM
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "the reference row needs the package 'transformers' (pip install transformers)", name="transformers"
            ) from None
        with quiet_transformers():
            self.module = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
        self.device = device

    @property
    def attn_implementation(self) -> str:
        return str(self.module.config._attn_implementation)

    @torch.no_grad()
    def prefill_logits(self, prompt: torch.Tensor) -> torch.Tensor:
        """The logits of the prompt's (b, t) last position (b, vocab)."""
        return self.module(prompt).logits[:, -1]  # (b, vocab)

    def _generate(self, prompt: torch.Tensor, new_tokens: int) -> Any:
        return self.module.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),  # (b, t)
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    @torch.no_grad()
    def decode_timing(self, prompt: torch.Tensor, new_tokens: int, *, min_run_time: float) -> Timing:
        """Seconds for ``new_tokens`` decode steps after ``prompt`` (b, t): generate(n + 1) - generate(1)."""
        runs = []
        for count in (new_tokens + 1, 1):
            self._generate(prompt, count)  # warm-up
            runs.append(
                time_callable(lambda count=count: self._generate(prompt, count), self.device, min_run_time=min_run_time)
            )
        longer, prompt_only = runs
        return Timing(
            median_s=longer.median_s - prompt_only.median_s,
            p25_s=longer.p25_s - prompt_only.median_s,
            p75_s=longer.p75_s - prompt_only.median_s,
            num_samples=min(longer.num_samples, prompt_only.num_samples),
            method=f"{longer.method}: generate({new_tokens + 1}) - generate(1)",
        )

    def kv_bytes(self, batch: int, length: int) -> int:
        """Bytes of keys and values ``length`` positions of ``batch`` rows hold in its cache: per layer,
        (batch, key/value heads, length, head_dim) each, in the model's dtype."""
        config = self.module.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element_size = self.module.dtype.itemsize
        return 2 * config.num_hidden_layers * batch * heads * length * head_dim * element_size
