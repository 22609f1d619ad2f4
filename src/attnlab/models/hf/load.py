"""Load a Hugging Face checkpoint directory into a :class:`~attnlab.models.decoder.Decoder`.

Everything that can be checked is checked before any weight is used: ``config.json`` is converted (unknown
``model_type`` or fields attnlab cannot honour: an error naming them), the model's size is estimated on the
meta device and compared with the memory available, every checkpoint tensor is matched to a parameter by
the family's rules (:mod:`.tensors`) and its shape compared with the one the config implies, and every
parameter must be filled. Only then are the tensors read, one at a time, and copied in. Sharded checkpoints
(``model.safetensors.index.json``) are read shard by shard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from ...gpt.files import TensorFile, check_directory, is_file, open_tensor_file, read_json_object
from ...memory_guard import require_memory
from ..config import DecoderConfig
from ..decoder import Decoder
from .configs import config_from_hf
from .tensors import FAMILY_OF, IGNORED, RULES, convert, expected_shape, match

__all__ = ["from_hf", "open_checkpoint", "read_config", "read_eos_ids"]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_config_json(directory: Path) -> tuple[dict[str, Any], DecoderConfig]:
    """``directory/config.json`` as read, and the :class:`DecoderConfig` it describes."""
    check_directory(directory, "checkpoint directory")
    path = directory / CONFIG_FILE
    if not is_file(path):
        raise ValueError(f"{directory} has no {CONFIG_FILE}: not a Hugging Face checkpoint directory")
    data = read_json_object(path)
    return data, config_from_hf(data, str(path))


def read_config(directory: str | Path) -> DecoderConfig:
    """The :class:`DecoderConfig` of ``directory/config.json``."""
    return _read_config_json(Path(directory))[1]


def read_eos_ids(directory: str | Path) -> tuple[int, ...]:
    """The end-of-sequence token ids of the checkpoint (generation_config.json, else config.json); may be empty."""
    directory = Path(directory)
    for name in ("generation_config.json", CONFIG_FILE):
        if is_file(directory / name):
            value = read_json_object(directory / name).get("eos_token_id")
            values = value if isinstance(value, list) else [value]
            ids = tuple(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            if ids:
                return ids
    return ()


@contextmanager
def open_checkpoint(directory: str | Path) -> Iterator[dict[str, TensorFile]]:
    """Every tensor name of the checkpoint mapped to the open file holding it (shards included)."""
    directory = Path(directory)
    with ExitStack() as stack:
        if is_file(directory / INDEX_FILE):
            weight_map = read_json_object(directory / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError(f"{directory / INDEX_FILE} has no weight_map of tensor names to file names")
            files: dict[str, TensorFile] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = directory / shard
                if Path(shard).name != shard or not is_file(shard_path):
                    raise ValueError(f"{directory / INDEX_FILE} names shard {shard!r}, which is not in {directory}")
                files[shard] = stack.enter_context(open_tensor_file(shard_path))
            owners = {}
            for shard, tensors in files.items():
                for name in tensors.infos:
                    if name in owners:
                        raise ValueError(f"tensor {name!r} is in both {owners[name].path.name} and {shard}")
                    owners[name] = tensors
            yield owners
            return
        paths = [directory / name for name in WEIGHT_FILES if is_file(directory / name)]
        if not paths:
            raise ValueError(f"{directory} has none of {INDEX_FILE}, {', '.join(WEIGHT_FILES)}")
        tensors = stack.enter_context(open_tensor_file(paths[0]))
        yield dict.fromkeys(tensors.infos, tensors)


def _extra_layer(name: str, first: int, count: int) -> bool:
    """Whether ``name`` belongs to one of ``count`` layers numbered from ``first`` on (``model.layers.{i}.``)."""
    found = re.match(r"model\.layers\.(\d+)\.", name)
    return found is not None and first <= int(found.group(1)) < first + count


def _plan(
    config: DecoderConfig, shapes: dict[str, tuple[int, ...]], owners: dict[str, TensorFile], skipped_layers: int = 0
) -> list[Any]:
    """Match every checkpoint tensor to the parameters it fills and check shapes; ``ValueError`` for a tensor
    no rule knows, a shape that contradicts the config, or a parameter nothing fills. ``skipped_layers``: layers
    after the last one that the checkpoint carries but the model does not run (DeepSeek-V3's next-token
    prediction layers, used in training only)."""
    rules = RULES[FAMILY_OF[config.model_type]]
    plan, filled = [], set()
    for name in sorted(owners):
        if IGNORED.fullmatch(name) or _extra_layer(name, config.n_layers, skipped_layers):
            continue
        found = match(rules, name)
        if found is None or not all(local in shapes for local in found[1]):
            raise ValueError(f"checkpoint tensor {name!r} has no place in a {config.model_type} model with this config")
        rule, locals_ = found
        info = owners[name].infos[name]
        if not info.is_floating:
            raise ValueError(f"checkpoint tensor {name!r} is {info.dtype}; weights must be floating point")
        want = expected_shape(rule, [shapes[local] for local in locals_])
        if tuple(info.shape) != tuple(want):
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {tuple(info.shape)}, but config.json implies {tuple(want)}"
            )
        filled.update(locals_)
        plan.append((name, rule, locals_))
    missing = sorted(set(shapes) - filled)
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {', '.join(missing[:3])}"
        )
    return plan


def from_hf(
    directory: str | Path,
    attn_impl: str = "sdpa",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_bytes: int | None = None,
) -> Decoder:
    """The model of a Hugging Face checkpoint directory on ``attn_impl``, in eval mode, in ``dtype`` on ``device``.

    ``model_type`` may be any key of :data:`~.configs.CONVERTERS` (llama, mistral, qwen2, qwen3, gemma2,
    gemma3_text, gpt_oss, deepseek_v3, gpt2). ``max_bytes``: refuse a model larger than this (default: the memory
    available).
    """
    directory = Path(directory)
    data, config = _read_config_json(directory)
    prediction_layers = data.get("num_nextn_predict_layers") or 0
    skipped_layers = prediction_layers if isinstance(prediction_layers, int) and prediction_layers > 0 else 0
    with torch.device("meta"):
        meta = Decoder(config, attn_impl)  # also refuses an attention backend the architecture cannot use
    estimate = sum(p.numel() for p in meta.parameters()) * torch.empty((), dtype=dtype).element_size()
    if max_bytes is not None and estimate > max_bytes:
        raise ValueError(f"the model needs about {estimate:,} bytes, more than max_bytes={max_bytes:,}")
    require_memory(estimate, device, f"the {config.model_type} model of {directory}")
    tied = {"lm_head.weight"} if config.tie_embeddings else set()
    shapes = {name: tuple(p.shape) for name, p in meta.named_parameters() if name not in tied}
    with open_checkpoint(directory) as owners:
        plan = _plan(config, shapes, owners, skipped_layers)
        model = Decoder(config, attn_impl).to(device=device, dtype=dtype)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, rule, locals_ in plan:
                data = owners[name].load(name)
                for local, part in zip(locals_, convert(rule, data, [shapes[local] for local in locals_]), strict=True):
                    params[local].copy_(part)
    model.eos_token_ids = read_eos_ids(directory)
    return model.eval()
