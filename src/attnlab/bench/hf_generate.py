"""The reference row of the decode benchmark: transformers' ``generate`` on the same checkpoint directory.

``generate`` runs the prompt and then one token per step against its own KV cache. Its time per decoded
token is measured as a difference: ``generate(new_tokens + 1)`` minus ``generate(1)`` (prompt plus its
first token in both), over ``new_tokens`` -- the same steps, against the same cache lengths, that the
attnlab rows time directly. The two are timed in alternating pairs, the median difference kept. Greedy,
no sampling, transformers' default attention (``sdpa``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

from ..gpt.hf_random import quiet_transformers
from .devices import synchronize
from .timing import Timing

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
    def decode_timing(
        self, prompt: torch.Tensor, new_tokens: int, *, min_run_time: float, min_pairs: int = 3
    ) -> Timing:
        """Seconds for ``new_tokens`` decode steps after ``prompt`` (b, t): generate(n + 1) - generate(1).

        The two calls are timed in alternating pairs (at least ``min_pairs``, until ``min_run_time`` has
        passed), and the median of the pairs' differences is taken, so a change of machine load between the
        two measurements cannot leave the prompt's share in the result. ``ValueError`` if the median
        difference is not positive (the load swamped the decode steps: rerun).
        """
        threads = torch.get_num_threads()  # Timer would run on 1 thread by default
        longer = Timer("run()", globals={"run": lambda: self._generate(prompt, new_tokens + 1)}, num_threads=threads)
        shorter = Timer("run()", globals={"run": lambda: self._generate(prompt, 1)}, num_threads=threads)
        longer.timeit(1), shorter.timeit(1)  # warm-up
        differences: list[float] = []
        started = time.perf_counter()
        while len(differences) < min_pairs or time.perf_counter() - started < min_run_time:
            synchronize(self.device)
            differences.append(longer.timeit(1).median - shorter.timeit(1).median)
        samples = torch.tensor(differences, dtype=torch.float64)  # (pairs,)
        p25, median, p75 = torch.quantile(samples, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        if median <= 0:
            raise ValueError(
                f"generate({new_tokens + 1}) took no longer than generate(1) (median difference {median:.3g} s over "
                f"{len(differences)} pairs): the machine's load swamped the decode steps; rerun"
            )
        pairs = f"{len(differences)} alternating pairs"
        method = f"torch.utils.benchmark.Timer, {pairs}: generate({new_tokens + 1}) - generate(1)"
        return Timing(median_s=median, p25_s=p25, p75_s=p75, num_samples=len(differences), method=method)

    def kv_bytes(self, batch: int, length: int) -> int:
        """Bytes of keys and values ``length`` positions of ``batch`` rows hold in its cache: per layer,
        (batch, key/value heads, length, head_dim) each, in the model's dtype."""
        config = self.module.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element_size = self.module.dtype.itemsize
        return 2 * config.num_hidden_layers * batch * heads * length * head_dim * element_size
