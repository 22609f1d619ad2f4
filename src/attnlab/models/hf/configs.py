"""Hugging Face ``config.json`` -> :class:`~attnlab.models.config.DecoderConfig`, one converter per ``model_type``.

Each converter reads the fields its architecture defines (through :class:`~.reader.ConfigReader`, which
checks their types and refuses any field left unread that could change the logits) and sets the choices of
:class:`DecoderConfig`. The table :data:`CONVERTERS` is the one place that says which ``model_type`` values
attnlab runs; architectures register here by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import DecoderConfig, MLAConfig, MoEConfig, RopeConfig
from .reader import ConfigReader

__all__ = ["CONVERTERS", "config_from_hf", "read_rope", "read_windows", "register_converter"]

Converter = Callable[[ConfigReader], DecoderConfig]
CONVERTERS: dict[str, Converter] = {}


def register_converter(*model_types: str) -> Callable[[Converter], Converter]:
    """Decorator: ``fn`` converts the configs of ``model_types``."""

    def register(fn: Converter) -> Converter:
        for model_type in model_types:
            CONVERTERS[model_type] = fn
        return fn

    return register


def _rope_from_dict(params: dict[str, Any], theta_default: float | None, source: str) -> RopeConfig:
    """A :class:`RopeConfig` from transformers' rope parameters (``rope_type``/``type``, ``factor``, ...)."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: rope parameters must be a JSON object, got {type(params).__name__}")
    known = {
        "rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
        "attention_factor", "truncate", "partial_rotary_factor",
    }  # fmt: skip
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{source}: rope parameters {', '.join(unknown)} are not supported by attnlab")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        raise ValueError(
            f"{source}: rope_type {rope_type!r} is not supported by attnlab (supported: default, linear, llama3, yarn)"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor {params['partial_rotary_factor']!r} is not supported")
    theta = params.get("rope_theta", theta_default)
    if theta is None:
        raise ValueError(f"{source}: rope_theta is missing")
    optional = {
        "low_freq_factor": params.get("low_freq_factor"),
        "high_freq_factor": params.get("high_freq_factor"),
        "original_context_length": params.get("original_max_position_embeddings"),
        "mscale": params.get("mscale"),
        "mscale_all_dim": params.get("mscale_all_dim"),
        "attention_factor": params.get("attention_factor"),
    }
    try:
        return RopeConfig(
            theta=theta,
            rope_type=rope_type,
            factor=params.get("factor") or 1.0,
            beta_fast=params.get("beta_fast") or 32.0,
            beta_slow=params.get("beta_slow") or 1.0,
            truncate=params.get("truncate", True),
            **optional,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def read_rope(reader: ConfigReader, layer_type: str | None = None, interleaved: bool = False) -> RopeConfig:
    """The rotary config: transformers 5's ``rope_parameters`` (per layer type when nested), else the older
    ``rope_theta`` + ``rope_scaling``."""
    params = reader.raw("rope_parameters")
    theta = reader.float("rope_theta", None)
    if params is None:
        params = reader.raw("rope_scaling") or {}
    else:
        reader.raw("rope_scaling")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    rope = _rope_from_dict(dict(params), theta if theta is not None else 10000.0, reader.source)
    if interleaved:
        from dataclasses import replace

        rope = replace(rope, interleaved=True)
    return rope


def read_windows(reader: ConfigReader, n_layers: int, default_sliding: Callable[[int], bool]) -> tuple[int | None, ...]:
    """Each layer's sliding window: from ``layer_types`` when the config has it, else ``default_sliding(layer)``."""
    window = reader.int("sliding_window", None)
    layer_types = reader.raw("layer_types")
    if layer_types is None:
        sliding = [default_sliding(i) for i in range(n_layers)]
    else:
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise ValueError(f"{reader.source}: layer_types must list one type per layer ({n_layers})")
        bad = sorted({kind for kind in layer_types if kind not in ("full_attention", "sliding_attention")})
        if bad:
            raise ValueError(f"{reader.source}: layer type(s) {', '.join(map(str, bad))} are not supported by attnlab")
        sliding = [kind == "sliding_attention" for kind in layer_types]
    if any(sliding) and window is None:
        raise ValueError(f"{reader.source}: sliding-window layers need sliding_window")
    return tuple(window if is_sliding else None for is_sliding in sliding)


def _common(reader: ConfigReader) -> dict[str, Any]:
    """The fields every Llama-like config shares."""
    d_model = reader.int("hidden_size")
    num_heads = reader.int("num_attention_heads")
    return {
        "vocab_size": reader.int("vocab_size"),
        "d_model": d_model,
        "n_layers": reader.int("num_hidden_layers"),
        "num_heads": num_heads,
        "num_kv_heads": reader.int("num_key_value_heads", num_heads),
        "head_dim": reader.int("head_dim", None),
        "d_ff": reader.int("intermediate_size"),
        "context_length": reader.int("max_position_embeddings"),
        "norm_eps": reader.float("rms_norm_eps", 1e-6),
        "tie_embeddings": reader.bool("tie_word_embeddings", False),
    }


@register_converter("llama", "mistral", "qwen2", "qwen3")
def _llama_family(reader: ConfigReader) -> DecoderConfig:
    """Llama 3, Mistral, Qwen 2 and Qwen 3: RMSNorm, SwiGLU, RoPE, grouped-query attention."""
    model_type = reader.str("model_type")
    common = _common(reader)
    reader.require("hidden_act", ("silu",), "silu")
    bias = reader.bool("attention_bias", model_type == "qwen2")
    use_sliding = reader.bool("use_sliding_window", model_type == "mistral")
    max_window_layers = reader.int("max_window_layers", 0, minimum=0)
    if model_type in ("qwen2", "qwen3") and not use_sliding and reader.data.get("layer_types") is None:
        reader.raw("sliding_window")  # present but unused without use_sliding_window
        windows = (None,) * common["n_layers"]
    elif model_type == "mistral":
        windows = read_windows(reader, common["n_layers"], lambda layer: reader.data.get("sliding_window") is not None)
    else:
        windows = read_windows(reader, common["n_layers"], lambda layer: use_sliding and layer >= max_window_layers)
    return DecoderConfig(
        **common,
        norm="rmsnorm",
        ffn="swiglu",
        ffn_bias=reader.bool("mlp_bias", False),
        rope=read_rope(reader),
        qkv_bias=bias,
        out_bias=bias and model_type != "qwen2",  # Qwen 2 biases q, k and v only
        qk_norm=model_type == "qwen3",
        layer_windows=windows,
        model_type=model_type,
    )


@register_converter("gemma2", "gemma3_text")
def _gemma(reader: ConfigReader) -> DecoderConfig:
    """Gemma 2 and 3: sandwich norms with ``1 + weight``, GeGLU, scaled embeddings, local/global layers."""
    model_type = reader.str("model_type")
    common = _common(reader)
    common["tie_embeddings"] = reader.bool("tie_word_embeddings", True)
    reader.require("hidden_activation", ("gelu_pytorch_tanh", "gelu_tanh"), "gelu_pytorch_tanh")
    reader.require("hidden_act", ("gelu_pytorch_tanh", "gelu_tanh", None), None)
    reader.require("attention_bias", (False,), False)
    head_dim = common["head_dim"] or common["d_model"] // common["num_heads"]
    pattern = 2 if model_type == "gemma2" else reader.int("sliding_window_pattern", 6)
    windows = read_windows(reader, common["n_layers"], lambda layer: (layer + 1) % pattern != 0)
    rope_local = None
    if model_type == "gemma3_text":
        params = reader.data.get("rope_parameters")
        if isinstance(params, dict) and "sliding_attention" in params:
            rope, rope_local = read_rope(reader, "full_attention"), read_rope(reader, "sliding_attention")
        else:
            rope = read_rope(reader)
            local_theta = reader.float("rope_local_base_freq", 10000.0)
            rope_local = RopeConfig(theta=local_theta)
    else:
        rope = read_rope(reader)
    return DecoderConfig(
        **common,
        norm="rmsnorm_plus_one",
        block="sandwich",
        ffn="geglu",
        rope=rope,
        rope_local=rope_local,
        qk_norm=model_type == "gemma3_text",
        layer_windows=windows,
        attn_scale=reader.float("query_pre_attn_scalar", float(head_dim)) ** -0.5,
        attn_softcap=reader.float("attn_logit_softcapping", None),
        final_softcap=reader.float("final_logit_softcapping", None),
        embed_scale=True,
        model_type=model_type,
    )


@register_converter("deepseek_v3")
def _deepseek_v3(reader: ConfigReader) -> DecoderConfig:
    """DeepSeek-V3: multi-head latent attention (:mod:`..mla`) with interleaved YaRN rotary features, RMSNorm,
    SwiGLU in the first ``first_k_dense_replace`` layers and a sigmoid-routed mixture of experts after them."""
    common = _common(reader)
    heads = common["num_heads"]
    if common["num_kv_heads"] != heads:
        raise ValueError(
            f"num_key_value_heads {common['num_kv_heads']} must equal num_attention_heads {heads}: "
            "multi-head latent attention has no grouped key/value heads"
        )
    reader.require("hidden_act", ("silu",), "silu")
    reader.require("topk_method", ("noaux_tc",), "noaux_tc")  # the router transformers implements
    reader.require("scoring_func", ("sigmoid",), "sigmoid")
    reader.require("moe_layer_freq", (1,), 1)
    mla = MLAConfig(
        kv_lora_rank=reader.int("kv_lora_rank"),
        qk_nope_head_dim=reader.int("qk_nope_head_dim"),
        qk_rope_head_dim=reader.int("qk_rope_head_dim"),
        v_head_dim=reader.int("v_head_dim"),
        q_lora_rank=reader.int("q_lora_rank", None),
    )
    qk_head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    # transformers writes its derived head_dim (= qk_rope_head_dim, the rotary width) and qk_head_dim.
    given = {"head_dim": common["head_dim"], "qk_head_dim": reader.int("qk_head_dim", None)}
    implied = {"head_dim": mla.qk_rope_head_dim, "qk_head_dim": qk_head_dim}
    for key, value in given.items():
        if value is not None and value != implied[key]:
            raise ValueError(f"{key} must be {implied[key]} (implied by the MLA widths), got {value}")
    common["head_dim"] = qk_head_dim  # the width of one query/key head
    rope = read_rope(reader, interleaved=reader.bool("rope_interleave", True))
    params = reader.data.get("rope_parameters") or reader.data.get("rope_scaling") or {}
    if rope.rope_type == "yarn" and params.get("factor") is None:
        # transformers would derive it from max_position_embeddings / original_max_position_embeddings
        raise ValueError("yarn rope parameters without factor are not supported (give factor explicitly)")
    # transformers builds experts in every layer from first_k_dense_replace on (none when it is >= the layer
    # count); the router's fields have no safe default (transformers' and DeepSeek's differ), so all are required.
    moe = MoEConfig(
        num_experts=reader.int("n_routed_experts"),
        top_k=reader.int("num_experts_per_tok"),
        d_expert=reader.int("moe_intermediate_size"),
        router="sigmoid_group",
        num_shared_experts=reader.int("n_shared_experts", 0, minimum=0),
        num_groups=reader.int("n_group"),
        topk_group=reader.int("topk_group"),
        routed_scaling=reader.float("routed_scaling_factor"),
        normalize_topk=reader.bool("norm_topk_prob", True),
        dense_layers=reader.int("first_k_dense_replace", minimum=0),
    )
    bias = reader.bool("attention_bias", False)
    return DecoderConfig(
        **common,
        norm="rmsnorm",
        ffn="moe",
        moe=moe,
        mla=mla,
        rope=rope,
        qkv_bias=bias,
        out_bias=bias,
        model_type="deepseek_v3",
    )


@register_converter("gpt2")
def _gpt2(reader: ConfigReader) -> DecoderConfig:
    """GPT-2: LayerNorm, GELU MLP of width 4 d_model (or n_inner), learned positions, biases everywhere."""
    d_model = reader.int("n_embd")
    reader.require("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
    reader.require("scale_attn_by_inverse_layer_idx", (False,), False)
    reader.require("reorder_and_upcast_attn", (False,), False)
    reader.require("add_cross_attention", (False,), False)
    return DecoderConfig(
        vocab_size=reader.int("vocab_size"),
        d_model=d_model,
        n_layers=reader.int("n_layer"),
        num_heads=reader.int("n_head"),
        d_ff=reader.int("n_inner", 4 * d_model),
        context_length=reader.int("n_positions"),
        norm="layernorm",
        norm_eps=reader.float("layer_norm_epsilon", 1e-5),
        ffn="gelu",
        ffn_bias=True,
        positions="learned",
        rope=None,
        qkv_bias=True,
        out_bias=True,
        tie_embeddings=reader.bool("tie_word_embeddings", True),
        model_type="gpt2",
    )


@register_converter("gpt_oss")
def _gpt_oss(reader: ConfigReader) -> DecoderConfig:
    """gpt-oss: a mixture of experts (softmax over the top-k router logits, gpt-oss's clamped SwiGLU experts
    with biases), attention with biases and sinks, sliding and full layers alternating, YaRN rotary positions.

    The released checkpoints store the experts in MXFP4 (``quantization_config``); attnlab refuses them by name
    and runs plain floating-point checkpoints (such as a dequantized copy)."""
    quantization = reader.raw("quantization_config")
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise ValueError(
            f"quantization_config (quant_method {method!r}; gpt-oss ships its experts in MXFP4) is not supported by "
            "attnlab: use a checkpoint saved in plain floating point (dequantized)"
        )
    common = _common(reader)
    if not reader.has("rms_norm_eps"):
        common["norm_eps"] = 1e-5  # gpt-oss's default
    reader.require("hidden_act", ("silu",), "silu")  # named in the config; the experts use their own SwiGLU variant
    bias = reader.bool("attention_bias", True)
    windows = read_windows(reader, common["n_layers"], lambda layer: layer % 2 == 0)  # default: sliding, full, ...
    if reader.has("rope_parameters") or reader.has("rope_scaling"):
        rope = read_rope(reader)
    else:  # gpt-oss's default rotary positions
        rope = RopeConfig(
            theta=reader.float("rope_theta", 150000.0),
            rope_type="yarn",
            factor=32.0,
            original_context_length=4096,
            truncate=False,
        )
    moe = MoEConfig(
        num_experts=reader.int("num_local_experts", 128),
        top_k=reader.int("num_experts_per_tok", 4),
        d_expert=common["d_ff"],
        router="softmax_topk",
        expert_bias=True,
        swiglu_alpha=reader.float("swiglu_alpha", 1.702),
        swiglu_limit=reader.float("swiglu_limit", 7.0),
    )
    return DecoderConfig(
        **common,
        norm="rmsnorm",
        ffn="moe",
        moe=moe,
        rope=rope,
        qkv_bias=bias,
        out_bias=bias,
        sinks=True,
        layer_windows=windows,
        model_type="gpt_oss",
    )


def config_from_hf(data: dict[str, Any], source: str = "config.json") -> DecoderConfig:
    """The :class:`DecoderConfig` of a Hugging Face config dict; ``ValueError`` for an unknown ``model_type`` or a
    field attnlab cannot honour (named)."""
    model_type = data.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; attnlab runs: {', '.join(sorted(CONVERTERS))}"
        )
    reader = ConfigReader(data, source)
    try:
        config = CONVERTERS[model_type](reader)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None
    reader.finish()
    return config
