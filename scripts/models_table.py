#!/usr/bin/env python3
"""The attention of every architecture attnlab.models runs, at real size, as the Markdown table of docs/models.md.

One row per ``model_type`` that attnlab converts (:data:`attnlab.models.hf.CONVERTERS`). The config of each row
is transformers' default config for that model type (``AutoConfig.for_model(model_type)``, saved as a
config.json and read back by attnlab's own converter, so the row shows what attnlab makes of it), except
Llama, whose default is a Llama 2 7B: the Llama 3 8B config is written out below instead. The KV-cache
numbers come from :func:`attnlab.models.memory.kv_cache_bytes` (the caches' own allocation, counted on the
meta device) in bfloat16: what one token costs while every layer's cache holds it, and the whole cache of one
sequence of the model's full context (sliding-window layers hold only their last ``window`` tokens).

    PYTHONPATH=src python3 scripts/models_table.py            # prints the table (paste it into docs/models.md)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from attnlab.models import DecoderConfig, RopeConfig
from attnlab.models.hf import CONVERTERS
from attnlab.models.memory import kv_cache_bytes, read_model_config

#: Llama 3 8B (meta-llama/Meta-Llama-3.1-8B's config.json, the fields that shape the model).
LLAMA3_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "hidden_act": "silu",
}


def config_data(model_type: str) -> tuple[dict, str]:
    """(config.json contents, where they come from) for ``model_type``."""
    if model_type == "llama":
        return LLAMA3_8B, "Llama 3 8B (written out in this script)"
    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as directory:
        AutoConfig.for_model(model_type).save_pretrained(directory)
        data = json.loads((Path(directory) / "config.json").read_text())
    return data, f"`AutoConfig.for_model({model_type!r})`"


def windows(config: DecoderConfig) -> str:
    """The layers' windows as their repeating pattern: ``full``, ``4096``, ``4096, full`` (period 2), ..."""
    layers = config.layer_windows
    period = next(p for p in range(1, len(layers) + 1) if all(w == layers[i % p] for i, w in enumerate(layers)))
    names = ["full" if w is None else str(w) for w in layers[:period]]
    runs: list[list] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    text = ", ".join(name if count == 1 else f"{count}× {name}" for name, count in runs)
    return text if period == 1 or period == len(layers) else f"({text}) repeated"


def positions(config: DecoderConfig) -> str:
    if config.positions == "learned":
        return "learned"

    def one(rope: RopeConfig) -> str:
        scaling = "" if rope.rope_type == "default" else f" {rope.rope_type} ×{rope.factor:g}"
        return f"RoPE θ={rope.theta:,.0f}{scaling}"

    if config.rope_local is not None:
        return f"{one(config.rope)} (global), {one(config.rope_local)} (sliding)"
    return one(config.rope)


def row(model_type: str) -> list[str]:
    data, source = config_data(model_type)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(data))
        config = read_model_config(path)
    report = kv_cache_bytes(config, config.context_length, 1, torch.bfloat16)
    per_token = sum(r.bytes_per_token for r in report.rows)  # one token held in every layer's cache
    mla = config.mla
    heads = f"{config.num_heads}"
    kv_heads = "latent" if mla is not None else f"{config.num_kv_heads}"
    head_dim = (
        f"{mla.qk_nope_head_dim}+{mla.qk_rope_head_dim} (v {mla.v_head_dim})"
        if mla is not None
        else f"{config.head_dim}"
    )
    return [
        f"`{model_type}`",
        source,
        f"{config.d_model:,}",
        str(config.n_layers),
        heads,
        kv_heads,
        head_dim,
        windows(config),
        positions(config),
        "—" if config.attn_softcap is None else f"{config.attn_softcap:g}",
        "yes" if config.sinks else "—",
        "yes" if config.qk_norm else "—",
        f"{per_token:,}",
        f"{config.context_length:,}",
        f"{report.total_bytes / 2**30:.2f} GiB",
    ]


HEADER = [
    "model_type",
    "config",
    "d_model",
    "layers",
    "heads",
    "kv heads",
    "head_dim",
    "window pattern",
    "positions",
    "softcap",
    "sinks",
    "QK-norm",
    "KV bytes per cached token (bf16)",
    "context",
    "KV cache at full context (bf16, 1 sequence)",
]


def main() -> None:
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for model_type in sorted(CONVERTERS):
        print("| " + " | ".join(row(model_type)) + " |")


if __name__ == "__main__":
    main()
