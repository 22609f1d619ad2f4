"""What a decoder is made of, as validated frozen dataclasses: :class:`DecoderConfig` and :class:`RopeConfig`.

Every modern decoder in :mod:`attnlab.models` is the same skeleton (embeddings, ``n_layers`` blocks of
attention and feed-forward with residual connections, a final norm, the output head); the architectures
differ in a handful of choices, each one a field here:

==================  =====================================================================================
field               choices (who uses them)
==================  =====================================================================================
``norm``            ``layernorm`` (GPT-2), ``rmsnorm`` (Llama, Qwen, Mistral, gpt-oss, DeepSeek),
                    ``rmsnorm_plus_one`` (Gemma: the weight is stored as ``w`` and applied as ``1 + w``)
``block``           ``pre_norm`` (x + f(norm(x))), ``sandwich`` (Gemma 2/3: x + norm(f(norm(x))))
``ffn``             ``gelu`` (GPT-2), ``swiglu`` (Llama, Qwen, Mistral), ``geglu`` (Gemma), ``moe``
``positions``       ``learned`` (GPT-2), ``rope`` (everyone else; :class:`RopeConfig`)
``layer_windows``   one sliding window (or None: full attention) per layer
==================  =====================================================================================

plus grouped key/value heads (``num_kv_heads``), q/k/v and output biases, QK-norm, the attention scale,
logit softcaps (attention and final), attention sinks and embedding scaling. A config that asks for
something inconsistent (heads that do not divide, a window list of the wrong length) is refused at
construction with a ``ValueError`` naming the field and the limit.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BLOCKS", "FFNS", "NORMS", "POSITIONS", "ROPE_TYPES", "DecoderConfig", "MoEConfig", "RopeConfig"]

NORMS = ("layernorm", "rmsnorm", "rmsnorm_plus_one")
BLOCKS = ("pre_norm", "sandwich")
FFNS = ("gelu", "swiglu", "geglu", "moe")
POSITIONS = ("learned", "rope")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {_show(value)}")


def _positive_real(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{' or None' if optional else ''}, got {_show(value)}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_show(value)}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_show(value)}")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding: the frequencies ``theta ** (-2i / rotary_dim)`` and how they are scaled.

    ``rope_type`` follows transformers' names: ``default`` (none), ``linear`` (positions divided by
    ``factor``), ``llama3`` (low frequencies divided by ``factor``, high ones kept, a smooth ramp between,
    set by ``low_freq_factor``/``high_freq_factor`` and ``original_context_length``) and ``yarn`` (the same
    idea with a linear ramp over ``beta_fast``/``beta_slow`` rotations, plus an attention factor that scales
    cos and sin: ``attention_factor`` or the one derived from ``factor``, ``mscale``, ``mscale_all_dim``).
    ``interleaved``: rotate pairs (x0, x1), (x2, x3), ... (DeepSeek's layout) instead of the two halves.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_context_length: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    interleaved: bool = False

    def __post_init__(self) -> None:
        _positive_real("rope theta", self.theta)
        _choice("rope_type", self.rope_type, ROPE_TYPES)
        _positive_real("rope factor", self.factor)
        for name in ("low_freq_factor", "high_freq_factor", "attention_factor"):
            _positive_real(f"rope {name}", getattr(self, name), optional=True)
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not math.isfinite(value) or value < 0):
                raise ValueError(f"rope {name} must be a finite number >= 0 or None, got {_show(value)}")
        _positive_real("rope beta_fast", self.beta_fast)
        _positive_real("rope beta_slow", self.beta_slow)
        _bool("rope truncate", self.truncate)
        _bool("rope interleaved", self.interleaved)
        if self.original_context_length is not None:
            _positive_int("rope original_context_length", self.original_context_length)
        if self.rope_type in ("llama3", "yarn") and self.original_context_length is None:
            raise ValueError(f"rope_type {self.rope_type!r} needs original_context_length")
        if self.rope_type == "llama3":
            if self.low_freq_factor is None or self.high_freq_factor is None:
                raise ValueError("rope_type 'llama3' needs low_freq_factor and high_freq_factor")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError(
                    f"rope high_freq_factor {self.high_freq_factor} must exceed low_freq_factor {self.low_freq_factor}"
                )


@dataclass(frozen=True)
class MoEConfig:
    """A mixture of experts in place of the dense feed-forward: ``num_experts`` experts of width ``d_expert``,
    each token routed to ``top_k`` of them. ``router``: ``softmax_topk`` (gpt-oss: softmax over the chosen
    experts' logits) or ``sigmoid_group`` (DeepSeek-V3: sigmoid scores plus a correction bias, chosen within
    ``topk_group`` of ``num_groups`` groups, normalised and scaled by ``routed_scaling``);
    ``num_shared_experts`` experts see every token (DeepSeek); ``dense_layers``: the first layers keep a dense
    feed-forward of width ``d_ff`` (DeepSeek's ``first_k_dense_replace``)."""

    num_experts: int
    top_k: int
    d_expert: int
    router: str = "softmax_topk"
    num_shared_experts: int = 0
    num_groups: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    normalize_topk: bool = True
    dense_layers: int = 0
    expert_bias: bool = False
    swiglu_alpha: float | None = None
    swiglu_limit: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_experts", "top_k", "d_expert", "num_groups", "topk_group"):
            _positive_int(f"moe {name}", getattr(self, name))
        _choice("moe router", self.router, ("softmax_topk", "sigmoid_group"))
        if self.top_k > self.num_experts:
            raise ValueError(f"moe top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if self.num_experts % self.num_groups != 0:
            raise ValueError(f"moe num_groups {self.num_groups} must divide num_experts {self.num_experts}")
        if self.topk_group > self.num_groups:
            raise ValueError(f"moe topk_group {self.topk_group} exceeds num_groups {self.num_groups}")
        for name in ("num_shared_experts", "dense_layers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"moe {name} must be an integer >= 0, got {_show(value)}")
        _positive_real("moe routed_scaling", self.routed_scaling)
        _bool("moe normalize_topk", self.normalize_topk)
        _bool("moe expert_bias", self.expert_bias)
        _positive_real("moe swiglu_alpha", self.swiglu_alpha, optional=True)
        _positive_real("moe swiglu_limit", self.swiglu_limit, optional=True)


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a rank-``q_lora_rank`` bottleneck (None:
    a plain projection), keys and values through one shared latent of width ``kv_lora_rank`` (what the cache
    stores) plus one rotary key of width ``qk_rope_head_dim`` shared by all heads; each query/key head has
    ``qk_nope_head_dim`` features without positions and ``qk_rope_head_dim`` with them, each value head
    ``v_head_dim``."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _positive_int(f"mla {name}", getattr(self, name))
        if self.q_lora_rank is not None:
            _positive_int("mla q_lora_rank", self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"mla qk_rope_head_dim {self.qk_rope_head_dim} must be even (rotary pairs)")


@dataclass(frozen=True)
class DecoderConfig:
    """One decoder-only transformer, see the module docstring for what each field chooses.

    ``head_dim`` defaults to ``d_model // num_heads``; ``num_kv_heads`` to ``num_heads``; ``layer_windows``
    to full attention everywhere; ``attn_scale`` to ``head_dim ** -0.5``; ``rope_local`` (the rotary
    frequencies of sliding-window layers, Gemma 3) to ``rope``.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    num_heads: int
    d_ff: int
    context_length: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    norm: Literal["layernorm", "rmsnorm", "rmsnorm_plus_one"] = "rmsnorm"
    norm_eps: float = 1e-6
    block: Literal["pre_norm", "sandwich"] = "pre_norm"
    ffn: Literal["gelu", "swiglu", "geglu", "moe"] = "swiglu"
    ffn_bias: bool = False
    positions: Literal["learned", "rope"] = "rope"
    rope: RopeConfig | None = field(default_factory=RopeConfig)
    rope_local: RopeConfig | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = False
    layer_windows: tuple[int | None, ...] | None = None
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sinks: bool = False
    embed_scale: bool = False
    tie_embeddings: bool = False
    moe: MoEConfig | None = None
    mla: MLAConfig | None = None
    model_type: str = "custom"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "num_heads", "d_ff", "context_length"):
            _positive_int(name, getattr(self, name))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        _positive_int("num_kv_heads", self.num_kv_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads} (each key/value head "
                "serves a group of query heads)"
            )
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        _positive_int("head_dim", self.head_dim)
        _choice("norm", self.norm, NORMS)
        _positive_real("norm_eps", self.norm_eps)
        _choice("block", self.block, BLOCKS)
        _choice("ffn", self.ffn, FFNS)
        _choice("positions", self.positions, POSITIONS)
        for name in ("ffn_bias", "qkv_bias", "out_bias", "qk_norm", "sinks", "embed_scale", "tie_embeddings"):
            _bool(name, getattr(self, name))
        if self.positions == "rope":
            if not isinstance(self.rope, RopeConfig):
                raise ValueError(f"positions 'rope' needs rope to be a RopeConfig, got {_show(self.rope)}")
            rotary_dim = self.mla.qk_rope_head_dim if self.mla is not None else self.head_dim
            if rotary_dim % 2:
                raise ValueError(f"rotary embedding needs an even head_dim, got {rotary_dim}")
        elif self.rope is not None or self.rope_local is not None:
            object.__setattr__(self, "rope", None)
            if self.rope_local is not None:
                raise ValueError("rope_local is set but positions is 'learned'")
        if self.rope_local is not None and not isinstance(self.rope_local, RopeConfig):
            raise ValueError(f"rope_local must be a RopeConfig or None, got {_show(self.rope_local)}")
        windows = (None,) * self.n_layers if self.layer_windows is None else tuple(self.layer_windows)
        if len(windows) != self.n_layers:
            raise ValueError(f"layer_windows has {len(windows)} entries; the model has n_layers={self.n_layers}")
        for window in windows:
            if window is not None and (not _is_int(window) or window < 1):
                raise ValueError(f"layer_windows entries must be None or positive integers, got {_show(window)}")
        object.__setattr__(self, "layer_windows", windows)
        for name in ("attn_scale", "attn_softcap", "final_softcap"):
            _positive_real(name, getattr(self, name), optional=True)
        if (self.ffn == "moe") != (self.moe is not None):
            raise ValueError("ffn 'moe' and a MoEConfig in moe go together (one without the other was given)")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise ValueError(f"moe must be a MoEConfig or None, got {_show(self.moe)}")
        if self.mla is not None:
            if not isinstance(self.mla, MLAConfig):
                raise ValueError(f"mla must be an MLAConfig or None, got {_show(self.mla)}")
            if self.positions != "rope":
                raise ValueError("multi-head latent attention needs positions 'rope'")
        if not isinstance(self.model_type, str):
            raise ValueError(f"model_type must be a string, got {_show(self.model_type)}")

    @property
    def q_width(self) -> int:
        """Width of all query heads together: ``num_heads * head_dim`` (not always ``d_model``: Gemma, Qwen 3)."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of all key (or value) heads together: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    def rope_for_layer(self, layer: int) -> RopeConfig | None:
        """The rotary configuration of layer ``layer``: ``rope_local`` on sliding-window layers when set."""
        if self.rope_local is not None and self.layer_windows[layer] is not None:
            return self.rope_local
        return self.rope

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (nested configs as dicts) that :meth:`from_dict` turns back into this config."""
        from dataclasses import asdict

        data = asdict(self)
        data["layer_windows"] = list(self.layer_windows)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """The config of :meth:`to_dict`'s output (unknown keys are refused by name)."""
        if not isinstance(data, dict):
            raise ValueError(f"a decoder config must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown decoder config fields: {', '.join(unknown)}")
        values = dict(data)
        for name, kind in (("rope", RopeConfig), ("rope_local", RopeConfig), ("moe", MoEConfig), ("mla", MLAConfig)):
            if isinstance(values.get(name), dict):
                values[name] = kind(**values[name])
        if isinstance(values.get("layer_windows"), list):
            values["layer_windows"] = tuple(values["layer_windows"])
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"bad decoder config: {error}") from error
