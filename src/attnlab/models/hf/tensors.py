"""Hugging Face tensor names -> attnlab parameter names, one table of rules per family of checkpoints.

A rule maps one checkpoint tensor (a regular expression; ``(?P<i>\\d+)`` is the layer, ``(?P<j>\\d+)`` an
expert) to one or more attnlab parameters and says how the data is laid out: ``copy`` (same shape),
``transpose`` (GPT-2's ``Conv1D`` stores ``(in, out)`` where ``nn.Linear`` has ``(out, in)``), ``split``
(GPT-2's fused ``c_attn`` holds queries, keys and values side by side). From the rules and the model's own
parameter shapes follow both the shapes the checkpoint must have (checked before any data is read) and the
conversion (:func:`convert`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "DEEPSEEK_MOE_RULES",
    "FAMILY_OF",
    "IGNORED",
    "RULES",
    "TensorRule",
    "convert",
    "expected_shape",
    "match",
]


@dataclass(frozen=True)
class TensorRule:
    """``hf`` (regex) -> ``local`` (templates filled with the regex's named groups: ``{i}`` the layer, ``{j}`` an
    expert); ``kind``: copy, transpose, split or split_transpose."""

    hf: str
    local: tuple[str, ...]
    kind: str = "copy"


def _layer(prefix: str, rules: Sequence[tuple[str, str]]) -> list[TensorRule]:
    return [TensorRule(rf"{prefix}\.(?P<i>\d+)\.{re.escape(hf)}", (f"blocks.{{i}}.{local}",)) for hf, local in rules]


_ATTENTION = [
    (f"self_attn.{name}_proj.{param}", f"attn.{name}_proj.{param}") for name in "qkvo" for param in ("weight", "bias")
] + [("self_attn.q_norm.weight", "attn.q_norm.weight"), ("self_attn.k_norm.weight", "attn.k_norm.weight")]
_MLP = [
    (f"mlp.{name}_proj.{param}", f"ffn.{name}_proj.{param}")
    for name in ("gate", "up", "down")
    for param in ("weight", "bias")
]
_NORMS = [  # the norm after attention ("post_attention_layernorm") is the feed-forward's pre-norm
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
]
_EDGES = [
    TensorRule(r"model\.embed_tokens\.weight", ("tok_emb.weight",)),
    TensorRule(r"model\.norm\.weight", ("final_norm.weight",)),
    TensorRule(r"lm_head\.weight", ("lm_head.weight",)),
]

#: DeepSeek-V3's mixture-of-experts tensors (the layers from ``first_k_dense_replace`` on), for
#: :class:`~attnlab.models.moe.MoEFeedForward` with the ``sigmoid_group`` router and plain SwiGLU experts: the
#: router ``mlp.gate`` (weight and the load-balancing ``e_score_correction_bias``), one SwiGLU per routed expert
#: ``mlp.experts.{j}``, and the shared experts ``mlp.shared_experts`` (one SwiGLU of width d_expert *
#: n_shared_experts). The dense layers before them use the plain ``mlp.{gate,up,down}_proj`` rules.
DEEPSEEK_MOE_RULES: list[TensorRule] = [
    TensorRule(r"model\.layers\.(?P<i>\d+)\.mlp\.gate\.weight", ("blocks.{i}.ffn.router.weight",)),
    TensorRule(
        r"model\.layers\.(?P<i>\d+)\.mlp\.gate\.e_score_correction_bias",
        ("blocks.{i}.ffn.router.e_score_correction_bias",),
    ),
] + [
    TensorRule(
        rf"model\.layers\.(?P<i>\d+)\.mlp\.{where}\.{name}_proj\.weight",
        (f"blocks.{{i}}.ffn.{local}.{name}_proj.weight",),
    )
    for where, local in ((r"experts\.(?P<j>\d+)", "experts.{j}"), ("shared_experts", "shared_experts"))
    for name in ("gate", "up", "down")
]

RULES: dict[str, list[TensorRule]] = {
    # Llama, Mistral, Qwen: the norm after attention ("post_attention_layernorm") is the feed-forward's pre-norm.
    "llama": _EDGES
    + _layer(
        r"model\.layers",
        [
            *_ATTENTION,
            *_MLP,
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ],
    ),
    # Gemma 2/3: four norms per block (sandwich).
    "gemma": _EDGES
    + _layer(
        r"model\.layers",
        [
            *_ATTENTION,
            *_MLP,
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "attn_post_norm.weight"),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            ("post_feedforward_layernorm.weight", "ffn_post_norm.weight"),
        ],
    ),
    # gpt-oss: attention with sinks; the router and the stacked experts (layouts as stored, see attnlab.models.moe).
    "gpt_oss": _EDGES
    + _layer(
        r"model\.layers",
        [
            *_ATTENTION,
            ("self_attn.sinks", "attn.sinks"),
            ("mlp.router.weight", "ffn.router.weight"),
            ("mlp.router.bias", "ffn.router.bias"),
            *[
                (f"mlp.experts.{name}", f"ffn.experts.{name}")
                for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")
            ],
            *_NORMS,
        ],
    ),
    # DeepSeek-V3: multi-head latent attention (attnlab's shorter names for the latent projections and norms),
    # the dense SwiGLU of the first layers under "mlp", Llama's block norms, the mixture of experts after them.
    "deepseek": _EDGES
    + _layer(
        r"model\.layers",
        [
            *[(f"self_attn.{name}.weight", f"attn.{name}.weight") for name in ("q_proj", "q_b_proj", "kv_b_proj")],
            *[
                (f"self_attn.{hf}.{param}", f"attn.{local}.{param}")
                for hf, local in (("q_a_proj", "q_a_proj"), ("kv_a_proj_with_mqa", "kv_a_proj"), ("o_proj", "o_proj"))
                for param in ("weight", "bias")
            ],
            ("self_attn.q_a_layernorm.weight", "attn.q_a_norm.weight"),
            ("self_attn.kv_a_layernorm.weight", "attn.kv_a_norm.weight"),
            *[(f"mlp.{name}_proj.weight", f"ffn.{name}_proj.weight") for name in ("gate", "up", "down")],
            *_NORMS,
        ],
    )
    + DEEPSEEK_MOE_RULES,  # the experts of the layers from first_k_dense_replace on
    "gpt2": [
        TensorRule(r"(transformer\.)?wte\.weight", ("tok_emb.weight",)),
        TensorRule(r"(transformer\.)?wpe\.weight", ("pos_emb.weight",)),
        TensorRule(r"(transformer\.)?ln_f\.weight", ("final_norm.weight",)),
        TensorRule(r"(transformer\.)?ln_f\.bias", ("final_norm.bias",)),
        TensorRule(r"lm_head\.weight", ("lm_head.weight",)),
    ]
    + [
        TensorRule(
            rf"(transformer\.)?h\.(?P<i>\d+)\.{re.escape(hf)}", tuple(f"blocks.{{i}}.{name}" for name in local), kind
        )
        for hf, local, kind in [
            ("ln_1.weight", ("attn_norm.weight",), "copy"),
            ("ln_1.bias", ("attn_norm.bias",), "copy"),
            ("ln_2.weight", ("ffn_norm.weight",), "copy"),
            ("ln_2.bias", ("ffn_norm.bias",), "copy"),
            (
                "attn.c_attn.weight",
                ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"),
                "split_transpose",
            ),
            ("attn.c_attn.bias", ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"), "split"),
            ("attn.c_proj.weight", ("attn.o_proj.weight",), "transpose"),
            ("attn.c_proj.bias", ("attn.o_proj.bias",), "copy"),
            ("mlp.c_fc.weight", ("ffn.up_proj.weight",), "transpose"),
            ("mlp.c_fc.bias", ("ffn.up_proj.bias",), "copy"),
            ("mlp.c_proj.weight", ("ffn.down_proj.weight",), "transpose"),
            ("mlp.c_proj.bias", ("ffn.down_proj.bias",), "copy"),
        ]
    ],
}

#: The family of rules each model_type's checkpoints follow (architectures add theirs here).
FAMILY_OF: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "gpt2": "gpt2",
    "gpt_oss": "gpt_oss",
    "deepseek_v3": "deepseek",
}

#: Checkpoint entries that are not parameters (buffers some versions saved) and are skipped.
IGNORED = re.compile(r".*(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


def match(rules: Sequence[TensorRule], name: str) -> tuple[TensorRule, tuple[str, ...]] | None:
    """The rule for checkpoint tensor ``name`` and the attnlab names it fills, or None."""
    for rule in rules:
        found = re.fullmatch(rule.hf, name)
        if found is not None:
            groups = found.groupdict()  # the layer i, and for per-expert tensors the expert j
            return rule, tuple(template.format(**groups) for template in rule.local)
    return None


def expected_shape(rule: TensorRule, local_shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape the checkpoint tensor must have, given the shapes of the attnlab parameters it fills."""
    if rule.kind == "copy":
        return local_shapes[0]
    if rule.kind == "transpose":
        return tuple(reversed(local_shapes[0]))
    if rule.kind == "split":
        return (sum(shape[0] for shape in local_shapes),)
    # split_transpose: (in, out_1 + out_2 + ...) for parameters (out_j, in)
    return (local_shapes[0][1], sum(shape[0] for shape in local_shapes))


def convert(rule: TensorRule, tensor: torch.Tensor, local_shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """The attnlab parameters' data from checkpoint ``tensor`` (shapes already checked)."""
    if rule.kind == "copy":
        return [tensor]
    if rule.kind == "transpose":
        return [tensor.t()]
    widths = [shape[0] for shape in local_shapes]
    if rule.kind == "split":
        return list(tensor.split(widths))
    return [part.t() for part in tensor.split(widths, dim=1)]  # (in, out_j) -> (out_j, in)
