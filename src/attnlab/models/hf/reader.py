"""A Hugging Face config dict read field by field: every value typed and checked, every field accounted for.

A config.json names many things; some change what the model computes (``rope_scaling``, ``sliding_window``,
``hidden_act``), some do not (``initializer_range``, ``transformers_version``). :class:`ConfigReader` hands out
the fields a converter asks for, with their types checked, and at the end refuses, by name, every field that
nobody read and that is not known to be harmless: a field attnlab does not understand might change the
logits, so it is an error, never a silent approximation.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["HARMLESS_FIELDS", "ConfigReader"]

#: Fields that do not change the logits of one forward pass (training, generation defaults, bookkeeping).
HARMLESS_FIELDS = frozenset(
    {
        "architectures",
        "attention_dropout",
        "bos_token_id",
        "dtype",
        "torch_dtype",
        "eos_token_id",
        "initializer_range",
        "model_type",
        "pad_token_id",
        "transformers_version",
        "use_cache",
        "output_router_logits",
        "router_aux_loss_coef",
        "pretraining_tp",
        "max_window_layers",
        "use_sliding_window",
        "_sliding_window_pattern",
        "sliding_window_pattern",
        "num_nextn_predict_layers",
        "cache_implementation",
        "_name_or_path",
        "auto_map",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "task_specific_params",
        "scale_attn_weights",
        "use_bidirectional_attention",
        "n_inner",
        "quantization_config",
        "ep_size",
        "aux_loss_alpha",
        "seq_aux",
    }
)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ConfigReader:
    """Typed access to a config dict; :meth:`finish` refuses the fields nobody read (unless harmless)."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.read: set[str] = set()

    def _fail(self, key: str, expected: str, value: object) -> ValueError:
        return ValueError(f"{self.source}: {key} must be {expected}, got {_show(value)}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def int(self, key: str, default: Any = ..., *, minimum: int = 1) -> int | None:
        value = self.raw(key, None)
        if value is None:
            if default is ...:
                raise ValueError(f"{self.source}: {key} is missing")
            return default
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
            raise self._fail(key, f"an integer >= {minimum}", value)
        return int(value)

    def float(self, key: str, default: Any = ..., *, positive: bool = True) -> float | None:
        value = self.raw(key, None)
        if value is None:
            if default is ...:
                raise ValueError(f"{self.source}: {key} is missing")
            return default
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise self._fail(key, "a finite number", value)
        if positive and value <= 0:
            raise self._fail(key, "a number > 0", value)
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, None)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def str(self, key: str, default: Any = ...) -> str | None:
        value = self.raw(key, None)
        if value is None:
            if default is ...:
                raise ValueError(f"{self.source}: {key} is missing")
            return default
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def require(self, key: str, allowed: tuple[Any, ...], default: Any) -> Any:
        """The value of ``key`` (``default`` when absent), which must be one of ``allowed``."""
        value = self.raw(key, default)
        if value not in allowed:
            choices = ", ".join(repr(choice) for choice in allowed)
            raise ValueError(f"{self.source}: {key}={_show(value)} is not supported by attnlab (supported: {choices})")
        return value

    def finish(self) -> None:
        """``ValueError`` naming every field that was not read and is not harmless."""
        unread = sorted(key for key in self.data if key not in self.read and key not in HARMLESS_FIELDS)
        unread = [key for key in unread if self.data[key] is not None]
        if unread:
            raise ValueError(
                f"{self.source}: attnlab does not know how to honour the field(s) {', '.join(unread)}; "
                "refusing rather than computing something else"
            )
