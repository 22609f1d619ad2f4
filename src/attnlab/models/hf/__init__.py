"""Hugging Face checkpoints for :mod:`attnlab.models`: configs (:mod:`.configs`), tensor names (:mod:`.tensors`),
loading (:mod:`.load`)."""

from .configs import CONVERTERS, config_from_hf
from .load import from_hf, read_config, read_eos_ids

__all__ = ["CONVERTERS", "config_from_hf", "from_hf", "read_config", "read_eos_ids"]
