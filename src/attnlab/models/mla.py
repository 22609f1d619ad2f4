"""Multi-head latent attention (MLA, DeepSeek-V2/V3): keys and values through one small shared latent.

Grouped-query attention shrinks the KV cache by sharing key/value heads; MLA shrinks it further by caching,
per position, only

- the **latent** ``c = norm(W_DKV x)`` of width ``kv_lora_rank`` (512 in DeepSeek-V3), from which every
  head's position-free key part and value are *computed* (``k_nope = W_UK c``, ``v = W_UV c``; the two
  matrices live in ``kv_b_proj``), and
- one **rotary key** ``k_rope`` of width ``qk_rope_head_dim`` (64) shared by all heads: RoPE cannot pass
  through the up-projection (a rotation depending on the position would sit between ``W_UK`` and the query),
  so positions get their own few features.

Each query head is ``(q_nope, q_rope)`` of widths ``qk_nope_head_dim`` and ``qk_rope_head_dim``, through a
rank-``q_lora_rank`` bottleneck (``q_a_proj``, a norm, ``q_b_proj``) or one plain ``q_proj``. The score of
head ``h`` is ``q_nope . (W_UK[h] c) + q_rope . k_rope``. Two ways to compute the same attention:

- **expanded** (``absorb=False``, the default): build every head's keys ``(k_nope, k_rope)`` and values from
  the latents and call the backend as ordinary multi-head attention. Backends need one head width for q, k
  and v, so the narrower side is padded with zeros to ``max(qk_nope + qk_rope, v_head_dim)`` (zero features add
  nothing to a dot product, and padded value features only produce output features that are sliced off).
  With a cache, each step re-expands the whole cached latent: cheap for a prompt, wasteful for decoding.
- **absorbed** (``absorb=True``): ``q_nope . (W_UK[h] c) = (W_UK[h]^T q_nope) . c``, so ``W_UK`` is folded
  into the query, which then lives in the latent space; the keys are the cached entries ``(c, k_rope)``
  themselves, ONE key head shared by all query heads (multi-query attention, width ``kv_lora_rank +
  qk_rope_head_dim``). The values are the same entries: the first ``kv_lora_rank`` output features are the
  attention-weighted latent, which ``W_UV[h]`` then maps to head ``h``'s output. Nothing is expanded; each
  decoding step reads the small cache once. This is how DeepSeek decodes (FlashMLA's layout).

Switch with :meth:`LatentAttention.set_absorb` (one layer) or :func:`set_mla_absorb` (a whole model).
:class:`LatentLayerCache` stores one ``(kv_lora_rank + qk_rope_head_dim)``-wide entry per position and layer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..backends import AttentionSpec
from .attention import CoreAttention, get_backend
from .cache import AttendFn, CacheStep, LayerCache
from .norms import RMSNorm
from .rope import _yarn_mscale, apply_rotary

if TYPE_CHECKING:
    from .config import DecoderConfig

__all__ = ["LATENT_NORM_EPS", "LatentAttention", "LatentLayerCache", "mla_softmax_scale", "set_mla_absorb"]

#: DeepSeek's latent norms (``q_a_layernorm``, ``kv_a_layernorm``) keep RMSNorm's default epsilon whatever
#: the config's ``rms_norm_eps`` (as in transformers and DeepSeek's reference code).
LATENT_NORM_EPS = 1e-6


def mla_softmax_scale(config: DecoderConfig) -> float:
    """The softmax scale: ``config.attn_scale`` when set, else ``(qk_nope + qk_rope) ** -0.5``, times ``mscale ** 2``
    for scaled rotary embeddings with ``mscale_all_dim`` (YaRN's attention temperature, applied to the scores of
    all dimensions, as transformers' ``DeepseekV3Attention.scaling``)."""
    mla = config.mla
    if config.attn_scale is not None:
        return float(config.attn_scale)
    scale = (mla.qk_nope_head_dim + mla.qk_rope_head_dim) ** -0.5
    rope = config.rope
    if rope is not None and rope.rope_type != "default" and rope.mscale_all_dim:
        mscale = _yarn_mscale(rope.factor, rope.mscale_all_dim)
        scale = scale * mscale * mscale
    return scale


def _unsupported_options(config: DecoderConfig, layer: int) -> list[str]:
    """The config options multi-head latent attention does not do (no MLA model uses them)."""
    wanted = {
        f"num_kv_heads={config.num_kv_heads} (MLA has one latent for all {config.num_heads} heads)": (
            config.num_kv_heads != config.num_heads
        ),
        f"a sliding window ({config.layer_windows[layer]})": config.layer_windows[layer] is not None,
        "attn_softcap": config.attn_softcap is not None,
        "sinks": config.sinks,
        "qk_norm": config.qk_norm,
    }
    return [name for name, used in wanted.items() if used]


class LatentLayerCache(LayerCache):
    """One entry per position: the normalised latent (``kv_lora_rank``) and the rotated shared key
    (``qk_rope_head_dim``), side by side in one ``(b, max_tokens, kv_lora_rank + qk_rope_head_dim)`` buffer
    (allocated on the first step), so that the absorbed path reads it as keys and values without a copy.

    The same :class:`~.cache.CacheStep` rules as :class:`~.cache.FullLayerCache`: rows of one length are
    slices, rows of different lengths (or ``static`` mode) are written with ``scatter_`` and read with
    ``kv_lens``. :meth:`attend` takes the step's new entries in place of keys and values."""

    def __init__(self, batch: int, max_tokens: int, kv_lora_rank: int, static: bool) -> None:
        self.batch = batch
        self.max_tokens = max_tokens
        self.kv_lora_rank = kv_lora_rank
        self.static = static
        self.entries: torch.Tensor | None = None  # (b, max_tokens, kv_lora_rank + qk_rope_head_dim)

    @property
    def latent(self) -> torch.Tensor | None:
        """The cached latents, a view (b, max_tokens, kv_lora_rank)."""
        return None if self.entries is None else self.entries[..., : self.kv_lora_rank]

    @property
    def rope_keys(self) -> torch.Tensor | None:
        """The cached rotated shared keys, a view (b, max_tokens, qk_rope_head_dim)."""
        return None if self.entries is None else self.entries[..., self.kv_lora_rank :]

    def attend(self, q: torch.Tensor, entries: torch.Tensor, step: CacheStep, attend: AttendFn) -> torch.Tensor:
        """Store ``entries`` (b, t, kv_lora_rank + qk_rope_head_dim) of the step's new tokens, then
        ``attend(q, stored, **fields)`` with every stored entry the new queries may see (``fields``: ``kv_lens``
        when rows differ)."""
        if self.entries is None:
            b, _, width = entries.shape
            self.entries = entries.new_zeros(b, self.max_tokens, width)  # (b, max_tokens, width)
        t = step.num_new
        if step.empty:  # the prompt attends itself; padding slots are stored but never read
            self.entries[:, :t] = entries
            return attend(q, entries)
        if step.start is not None:  # one common length: the filled prefix is a slice
            end = step.start + t
            self.entries[:, step.start : end] = entries
            return attend(q, self.entries[:, :end])
        b, _, width = entries.shape
        self.entries.scatter_(1, step.positions[:, :, None].expand(b, t, width), entries)
        stored = self.entries
        if not self.static:  # eager: no need to read past the longest row
            stored = stored[:, : int(step.kv_lens.max())]  # (b, longest, width)
        return attend(q, stored, kv_lens=step.kv_lens)

    @property
    def nbytes(self) -> int:
        return 0 if self.entries is None else self.entries.nbytes


class LatentAttention(nn.Module):
    """Multi-head latent attention of layer ``layer`` (DeepSeek-V3's layout and parameter names):
    (b, t, d_model) -> (b, t, d_model). ``absorb``: the absorbed path (see the module docstring)."""

    def __init__(self, config: DecoderConfig, layer: int, attn_impl: str, absorb: bool = False) -> None:
        super().__init__()
        mla = config.mla
        if mla is None:
            raise ValueError("LatentAttention needs a config with mla set (an MLAConfig)")
        unsupported = _unsupported_options(config, layer)
        if unsupported:
            raise ValueError(f"multi-head latent attention does not support {', '.join(unsupported)}")
        self.backend = get_backend(attn_impl)
        self.num_heads = config.num_heads
        self.kv_lora_rank = mla.kv_lora_rank
        self.nope_dim = mla.qk_nope_head_dim
        self.rope_dim = mla.qk_rope_head_dim
        self.v_head_dim = mla.v_head_dim
        qk_head_dim = self.nope_dim + self.rope_dim
        h = config.num_heads
        # Biases (qkv_bias: DeepSeek's attention_bias) only where transformers has them: q_a_proj and kv_a_proj
        # (and o_proj with out_bias); q_proj, q_b_proj and kv_b_proj never have one.
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(config.d_model, h * qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(config.d_model, mla.q_lora_rank, bias=config.qkv_bias)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, h * qk_head_dim, bias=False)
        self.q_lora = mla.q_lora_rank is not None
        # x -> (latent, k_rope): the "with MQA" of Hugging Face's name is the one rotary key shared by all heads.
        self.kv_a_proj = nn.Linear(config.d_model, self.kv_lora_rank + self.rope_dim, bias=config.qkv_bias)
        self.kv_a_norm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        # latent -> each head's (k_nope, v): W_UK and W_UV stacked, rows ordered head by head.
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, h * (self.nope_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_head_dim, config.d_model, bias=config.out_bias)
        self.rope_interleaved = config.rope.interleaved
        self.spec = AttentionSpec(causal=True, scale=mla_softmax_scale(config))
        self.core: CoreAttention | None = None
        self.absorb = False
        self.set_absorb(absorb)

    # -- options -------------------------------------------------------------------------------------

    def set_absorb(self, absorb: bool) -> None:
        """Use the absorbed path (True) or the expanded one (False); the absorbed one is multi-query attention,
        so the backend must do ``gqa`` when there is more than one head."""
        if not isinstance(absorb, bool):
            raise ValueError(f"absorb must be True or False, got {absorb!r}")
        if absorb and self.num_heads > 1:
            self.backend.check_features(("gqa",))
        self.absorb = absorb

    def set_core_attention(self, fn: CoreAttention | None) -> None:
        """Use ``fn(q, k, v, spec)`` instead of the backend (None: back to the backend)."""
        self.core = fn

    def new_layer_cache(self, batch: int, max_tokens: int, static: bool) -> LatentLayerCache:
        """A latent cache of every position (MLA layers have no sliding window)."""
        return LatentLayerCache(batch, max_tokens, self.kv_lora_rank, static)

    # -- the two paths -------------------------------------------------------------------------------

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **fields) -> torch.Tensor:
        """The backend (or the core set by :meth:`set_core_attention`) with this layer's spec + ``fields``."""
        spec = dataclasses.replace(self.spec, **fields) if fields else self.spec
        if self.core is not None:
            return self.core(q, k, v, spec)  # (b, h, t_q, hd)
        return self.backend.attend(q, k, v, spec)  # (b, h, t_q, hd)

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (h, qk_nope, kv_lora_rank) and W_UV (h, v_head_dim, kv_lora_rank), views of ``kv_b_proj``."""
        weight = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = weight.split([self.nope_dim, self.v_head_dim], dim=1)  # (h, nope, r), (h, v, r)
        return w_uk, w_uv

    def _attend_expanded(self, q: torch.Tensor, entries: torch.Tensor, **fields) -> torch.Tensor:
        """q (b, h, t_q, qk_nope + qk_rope) against every head's keys and values expanded from ``entries``
        (b, t_k, kv_lora_rank + qk_rope) -> (b, h, t_q, v_head_dim)."""
        b, t_k, _ = entries.shape
        h = self.num_heads
        latent, k_rope = entries.split([self.kv_lora_rank, self.rope_dim], dim=-1)  # (b, t_k, r), (b, t_k, rope)
        kv = self.kv_b_proj(latent).view(b, t_k, h, self.nope_dim + self.v_head_dim).transpose(1, 2)  # (b,h,t_k,n+v)
        k_nope, v = kv.split([self.nope_dim, self.v_head_dim], dim=-1)  # (b, h, t_k, nope), (b, h, t_k, v)
        k = torch.cat([k_nope, k_rope[:, None].expand(b, h, t_k, self.rope_dim)], dim=-1)  # (b, h, t_k, qk)
        width = max(k.shape[-1], self.v_head_dim)  # backends want one head width: zero-pad the narrower side
        q = F.pad(q, (0, width - q.shape[-1]))  # (b, h, t_q, width)
        k = F.pad(k, (0, width - k.shape[-1]))  # (b, h, t_k, width)
        v = F.pad(v, (0, width - self.v_head_dim))  # (b, h, t_k, width)
        return self._core(q, k, v, **fields)[..., : self.v_head_dim]  # (b, h, t_q, v_head_dim)

    def _attend_absorbed(self, q: torch.Tensor, entries: torch.Tensor, **fields) -> torch.Tensor:
        """q (b, h, t_q, kv_lora_rank + qk_rope), already in the latent space, against ``entries``
        (b, t_k, kv_lora_rank + qk_rope) as one shared key/value head -> (b, h, t_q, v_head_dim)."""
        shared = entries[:, None]  # (b, 1, t_k, r + rope): keys AND values, one head for all query heads
        out = self._core(q, shared, shared, **fields)  # (b, h, t_q, r + rope)
        weighted_latent = out[..., : self.kv_lora_rank]  # (b, h, t_q, r); the rope features are dropped
        _, w_uv = self._up_weights()
        return weighted_latent @ w_uv.transpose(1, 2)  # (b, h, t_q, r) @ (h, r, v) -> (b, h, t_q, v)

    # -- forward -------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LatentLayerCache | None = None,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` (b, t, d_model); ``rope`` the (cos, sin) of the tokens' positions, (b, t, qk_rope_head_dim)."""
        if rope is None:
            raise ValueError("multi-head latent attention needs rotary position embeddings (rope is None)")
        if cache is not None and not isinstance(cache, LatentLayerCache):
            raise ValueError(
                f"multi-head latent attention caches latents (LatentLayerCache); got a {type(cache).__name__}"
            )
        b, t, _ = x.shape
        h = self.num_heads
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if self.q_lora else self.q_proj(x)  # (b, t, h * qk)
        q = q.view(b, t, h, self.nope_dim + self.rope_dim).transpose(1, 2)  # (b, h, t, qk)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)  # (b, h, t, nope), (b, h, t, rope)
        latent, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)  # (b,t,r), (b,t,rope)
        latent = self.kv_a_norm(latent)  # (b, t, r)
        cos, sin = rope
        q_rope = apply_rotary(q_rope, cos, sin, self.rope_interleaved)  # (b, h, t, rope)
        k_rope = apply_rotary(k_rope[:, None], cos, sin, self.rope_interleaved)[:, 0]  # (b, t, rope)
        entries = torch.cat([latent, k_rope], dim=-1)  # (b, t, r + rope): what the cache keeps
        if self.absorb:
            w_uk, _ = self._up_weights()
            q_latent = q_nope @ w_uk  # (b, h, t, nope) @ (h, nope, r) -> (b, h, t, r)
            q, attend = torch.cat([q_latent, q_rope], dim=-1), self._attend_absorbed  # (b, h, t, r + rope)
        else:
            q, attend = torch.cat([q_nope, q_rope], dim=-1), self._attend_expanded  # (b, h, t, qk)
        out = attend(q, entries) if cache is None else cache.attend(q, entries, step, attend)  # (b, h, t, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * self.v_head_dim))  # (b, t, d_model)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_lora_rank={self.kv_lora_rank}, absorb={self.absorb}"


def set_mla_absorb(model: nn.Module, absorb: bool) -> int:
    """Switch every :class:`LatentAttention` layer of ``model`` to the absorbed (True) or expanded (False) path;
    returns how many layers were switched (``ValueError`` when there are none: not an MLA model)."""
    layers = [module for module in model.modules() if isinstance(module, LatentAttention)]
    if not layers:
        raise ValueError("the model has no multi-head latent attention layers (its config has no mla)")
    for layer in layers:
        layer.set_absorb(absorb)
    return len(layers)
