#!/usr/bin/env python3
"""Every architecture of attnlab.models at a small real-shaped size: prefill and decode speed against transformers.

For each model type a random checkpoint is written with transformers (d_model 512, 8 layers, 8 query heads of 64
features over 2 key/value heads, feed-forward 1536, vocabulary 32000; each architecture keeps its own features:
Mistral's window, Gemma's local/global layers and softcaps, gpt-oss's sinks and experts, DeepSeek's latent
attention and experts), loaded by both libraries, and timed in the same process (float32, batch 1, greedy):

- prefill: the 128-token prompt, ``torch.utils.benchmark``;
- decode: ms per new token over 32 tokens: attnlab from its own step timings (``GenerationStats``), transformers as
  ``generate(33) - generate(1)`` in alternating pairs (``attnlab.bench.hf_generate``);
- KV-cache bytes after prompt + new tokens, attnlab's measured from its cache tensors.

    PYTHONPATH=src python3 scripts/models_bench.py
    PYTHONPATH=src python3 scripts/models_bench.py --types llama,mistral --attn-impl sdpa_mask --markdown
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch.utils import benchmark

from attnlab.backends import BACKENDS
from attnlab.bench.hf_generate import GenerateReference
from attnlab.gpt.options import GenerationOptions
from attnlab.models import GenerationStats, from_hf, generate, read_config
from attnlab.models.attention import layer_features

SHAPE = dict(
    vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
    head_dim=64, intermediate_size=1536, max_position_embeddings=2048, bos_token_id=None, eos_token_id=None,
    pad_token_id=None,
)  # fmt: skip
EXTRA = {
    "llama": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 1024}),
    "qwen3": {},
    "mistral": dict(sliding_window=64),
    "gemma2": dict(sliding_window=64, query_pre_attn_scalar=64),
    "gemma3_text": dict(sliding_window=64, query_pre_attn_scalar=64),
    "gpt_oss": dict(sliding_window=64, num_local_experts=8, num_experts_per_tok=2,
                    rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                  "original_max_position_embeddings": 512, "truncate": False}),
    "deepseek_v3": dict(num_key_value_heads=8, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                        moe_intermediate_size=384, q_lora_rank=256, kv_lora_rank=128, qk_rope_head_dim=32,
                        qk_nope_head_dim=64, v_head_dim=64, first_k_dense_replace=1, head_dim=32),
}  # fmt: skip


def save_checkpoint(model_type: str, directory: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SHAPE, **EXTRA[model_type]})
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def pick_impl(directory: Path, wanted: str) -> str:
    """``wanted`` when it does the model's features, else the first of naive, flash_torch that does (naive is the
    faster of the two at these small sizes: flash_torch plans its tiles in Python at every call)."""
    config = read_config(directory)
    needed = {feature for layer in range(config.n_layers) for feature in layer_features(config, layer)}
    for name in (wanted, "naive", "flash_torch"):
        if needed <= set(BACKENDS[name].features):
            return name
    raise ValueError(f"no backend does {sorted(needed)}")


def measure(model_type: str, wanted_impl: str, prompt_len: int, new_tokens: int) -> dict:
    directory = save_checkpoint(model_type, Path(tempfile.mkdtemp()) / model_type)
    impl = pick_impl(directory, wanted_impl)
    model = from_hf(directory, impl)
    reference = GenerateReference(directory, torch.device("cpu"), torch.float32)
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(1))
    options = GenerationOptions(max_new_tokens=new_tokens)
    threads = torch.get_num_threads()  # torch.utils.benchmark.Timer runs on 1 thread unless told
    with torch.no_grad():
        prefill = (
            benchmark.Timer("model(prompt)", globals={"model": model, "prompt": prompt}, num_threads=threads)
            .blocked_autorange(min_run_time=1.0)
            .median
        )
        hf_prefill = (
            benchmark.Timer("m(prompt)", globals={"m": reference.module, "prompt": prompt}, num_threads=threads)
            .blocked_autorange(min_run_time=1.0)
            .median
        )
    generate(model, prompt, options)  # warm-up
    runs = []
    for _ in range(3):
        stats = GenerationStats()
        generate(model, prompt, options, stats=stats)
        runs.append(stats.decode_s / len(stats.steps))
    decode = sorted(runs)[1]
    hf_decode = reference.decode_timing(prompt, new_tokens, min_run_time=2.0).median_s / new_tokens
    cache = model.new_cache(1, prompt_len + new_tokens)
    with torch.no_grad():
        model(prompt, cache)
    return {
        "type": model_type, "impl": impl, "prefill_tps": prompt_len / prefill,
        "hf_prefill_tps": prompt_len / hf_prefill, "decode_tps": 1 / decode, "hf_decode_tps": 1 / hf_decode,
        "kv_bytes": cache.nbytes, "kv_tokens": prompt_len + new_tokens,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(EXTRA))
    parser.add_argument("--attn-impl", default="sdpa", help="backend, when it does the model's features")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = [measure(t, args.attn_impl, args.prompt_len, args.new_tokens) for t in track(args.types.split(","))]
    title = (
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, batch 1, float32, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    columns = ("model type", "backend", "prefill tok/s", "HF prefill tok/s", "decode tok/s", "HF decode tok/s",
               "decode ratio", "KV cache (KiB)")  # fmt: skip
    cells = [
        [r["type"], r["impl"], f"{r['prefill_tps']:.0f}", f"{r['hf_prefill_tps']:.0f}", f"{r['decode_tps']:.1f}",
         f"{r['hf_decode_tps']:.1f}", f"{r['decode_tps'] / r['hf_decode_tps']:.2f}x",
         f"{r['kv_bytes'] / 1024:.0f} ({r['kv_tokens']} tokens)"]
        for r in rows
    ]  # fmt: skip
    if args.markdown:
        print(title + "\n")
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
