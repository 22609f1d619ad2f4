"""attnlab's attention backends inside Hugging Face transformers models.

::

    import attnlab.hf

    names = attnlab.hf.register()  # {"naive": "attnlab_naive", "flash_torch": "attnlab_fa_torch", ...}
    model.set_attn_implementation(names["flash_torch"])  # or from_pretrained(..., attn_implementation=...)

:func:`register` adds every backend of :data:`attnlab.BACKENDS` to transformers' ``AttentionInterface``
(the attention function, :mod:`attnlab.hf.attention`) and ``AttentionMaskInterface`` (the mask function,
:mod:`attnlab.hf.masks`), under the names :func:`implementation_name` gives. A model then runs its attention
core on the attnlab backend: scaling, GQA (keys/values are not repeated), sliding windows, softcapping,
sinks and packed sequences pass through to :class:`attnlab.backends.AttentionSpec`; padding is expressed by
slicing and packing, and what cannot be expressed is refused with a ``ValueError``, never approximated.

transformers is optional: it is imported only by :func:`register` (and by the mask function it registers).
"""

from __future__ import annotations

from ..availability import missing_packages_reason
from ..backends import BACKENDS
from .attention import make_attention_function
from .masks import attnlab_mask

__all__ = ["RESERVED_WORDS", "implementation_name", "register"]

#: Words transformers reads meaning into when they occur in an ``attn_implementation`` name: "flash" selects
#: its FlashAttention paths (padding-free inputs, kernel loading), "sdpa" and "flex_attention" its checks
#: for those integrations. attnlab's names avoid them.
RESERVED_WORDS: tuple[str, ...] = ("flash", "sdpa", "flex_attention")


def implementation_name(backend_name: str) -> str:
    """The ``attn_implementation`` name of an attnlab backend: ``attnlab_`` + the name, "flash" -> "fa",
    "sdpa" -> "sdp" (``flash_torch`` -> ``attnlab_fa_torch``, ``sdpa_mask`` -> ``attnlab_sdp_mask``)."""
    if backend_name not in BACKENDS:
        raise ValueError(f"unknown attnlab backend {backend_name!r}; known: {', '.join(BACKENDS)}")
    name = "attnlab_" + backend_name.replace("flash", "fa").replace("sdpa", "sdp")
    reserved = [word for word in RESERVED_WORDS if word in name]
    if reserved:
        raise ValueError(f"the backend name {backend_name!r} gives {name!r}, which holds the reserved {reserved[0]!r}")
    return name


def register() -> dict[str, str]:
    """Register every attnlab backend with transformers; return ``{backend name: attn_implementation name}``.

    Safe to call more than once (it registers the same functions again). Raises ``ImportError`` when
    transformers is not installed.
    """
    missing = missing_packages_reason(("transformers",))
    if missing is not None:
        raise ImportError(f"attnlab.hf {missing}; install it with: pip install transformers")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    names = {}
    for backend_name in BACKENDS:
        name = implementation_name(backend_name)
        AttentionInterface.register(name, make_attention_function(backend_name))
        AttentionMaskInterface.register(name, attnlab_mask)
        names[backend_name] = name
    return names
