"""Property: every checkpoint loader, fed random bytes or random JSON, loads or raises a one-line ValueError.

Never another exception type, never a hang (each example runs under a time limit) and never a large
allocation (the process's peak memory may not grow by more than 1 GiB over the test). The inputs are
random bytes, random JSON values (nested, huge and negative numbers, NaN, strings, wrong types), and
valid files with random parts replaced, so that the later checks are reached too.
"""

import contextlib
import io
import json
import re
import resource
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attnlab.gpt import GPTConfig, GPTModel, load_model
from attnlab.gpt.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from attnlab.gpt.tokenizer import encode_prompt, load_tokenizer

SETTINGS = settings(
    max_examples=30,
    deadline=None,  # the machine is shared; hangs are caught by the per-example time limit instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIME_LIMIT_S = 30  # a tiny checkpoint loads in well under a second
MEMORY_GROWTH_LIMIT = 2**30

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, 1, -1, 2, 3, 48, 10**9, 10**12, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
HF_KEYS = [
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "resid_pdrop",
    "layer_norm_epsilon",
    "tie_word_embeddings",
    "activation_function",
    "model_type",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
]


@contextlib.contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise TimeoutError(f"a loader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def loads_or_refuses(load):
    """Call ``load``: it may return, or raise a ValueError with a one-line, non-empty message; anything
    else (another exception type, a hang) fails the test."""
    with time_limit(TIME_LIMIT_S):
        try:
            result = load()
        except ValueError as error:
            message = str(error)
            assert message.strip() and "\n" not in message and len(message) < 2000, repr(message)
            event("refused: " + re.sub(r"/\S+|\d+", "#", message)[:50])  # pytest --hypothesis-show-statistics
            return None
    event("loaded")
    return result


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """The process's peak memory may not grow by more than MEMORY_GROWTH_LIMIT over this module."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < MEMORY_GROWTH_LIMIT, f"peak memory grew by {grown / 2**20:.0f} MiB"


class Files(dict):
    """{file name: bytes}, with a short repr: hypothesis prints the test's arguments when it fails."""

    def __repr__(self):
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def files(tiny_hf, tmp_path_factory):
    """The bytes of a valid tiny checkpoint, both kinds: {file name: bytes}."""
    directory, hf_model = tiny_hf
    saved = tmp_path_factory.mktemp("attnlab_ckpt")
    GPTModel.from_hf(directory).save(saved)
    buffer = io.BytesIO()
    torch.save(hf_model.state_dict(), buffer)
    return Files(
        {
            "config.json": (directory / "config.json").read_bytes(),
            "model.safetensors": (directory / "model.safetensors").read_bytes(),
            "tokenizer.json": (directory / "tokenizer.json").read_bytes(),
            "pytorch_model.bin": buffer.getvalue(),
            CONFIG_FILE: (saved / CONFIG_FILE).read_bytes(),
            WEIGHTS_FILE: (saved / WEIGHTS_FILE).read_bytes(),
        }
    )


def load_directory(contents, **kwargs):
    """``load_model`` on a fresh directory holding ``contents`` ({file name: bytes})."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for file_name, data in contents.items():
            (directory / file_name).write_bytes(data)
        return loads_or_refuses(lambda: load_model(directory, **kwargs))


def damaged(data: bytes, draw) -> bytes:
    """``data`` truncated, or with random bytes overwritten or inserted."""
    how = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
    at = draw(st.integers(min_value=0, max_value=len(data)))
    if how == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=16))
    return data[:at] + junk + (data[at + len(junk) :] if how == "overwrite" else data[at:])


def dumps(value) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity are written as Python's json reads them


@SETTINGS
@given(data=st.data())
def test_hf_config_json(files, data):
    kind = data.draw(st.sampled_from(["random json", "mutated", "random bytes"]))
    if kind == "random json":
        config = dumps(data.draw(JSON_VALUES))
    elif kind == "mutated":
        values = json.loads(files["config.json"])
        keys = data.draw(st.lists(st.sampled_from(HF_KEYS) | st.text(max_size=8), min_size=1, max_size=3))
        values |= {key: data.draw(JSON_VALUES) for key in keys}
        config = dumps(values)
    else:
        config = data.draw(st.binary(max_size=64))
    load_directory({"config.json": config, "model.safetensors": files["model.safetensors"]})


@SETTINGS
@given(data=st.data())
def test_safetensors_file(files, data):
    kind = data.draw(st.sampled_from(["random bytes", "damaged", "random header"]))
    if kind == "random bytes":
        weights = data.draw(st.binary(max_size=256))
    elif kind == "damaged":
        weights = damaged(files["model.safetensors"], data.draw)
    else:  # a well-framed file whose header says random things
        entry = st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "C64", "F8_E4M3", "X"]) | JSON_VALUES,
                "shape": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3) | JSON_VALUES,
                "data_offsets": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3) | JSON_VALUES,
            }
        )
        names = st.sampled_from(["wte.weight", "wpe.weight", "h.0.ln_1.weight", "ln_f.bias"]) | st.text(max_size=6)
        header = dumps(data.draw(st.dictionaries(names, entry | JSON_VALUES, max_size=4)))
        body = data.draw(st.binary(max_size=64))
        weights = len(header).to_bytes(8, "little") + header + body
    target = data.draw(st.sampled_from(["hf", "attnlab"]))
    if target == "hf":
        load_directory({"config.json": files["config.json"], "model.safetensors": weights})
    else:
        load_directory({CONFIG_FILE: files[CONFIG_FILE], WEIGHTS_FILE: weights})


def random_pickleable(draw):
    tensors = st.builds(
        lambda shape, dtype: torch.zeros(shape, dtype=dtype),
        st.lists(st.integers(min_value=0, max_value=4), max_size=3),
        st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.complex64]),
    )
    values = JSON_SCALARS | tensors
    return draw(
        st.dictionaries(st.sampled_from(["wte.weight", "h.0.ln_1.bias"]) | st.text(max_size=6) | st.integers(), values)
        | values
        | st.lists(values, max_size=3)
    )


@SETTINGS
@given(data=st.data())
def test_pytorch_model_bin(files, data):
    kind = data.draw(st.sampled_from(["random bytes", "damaged", "random objects"]))
    if kind == "random bytes":
        weights = data.draw(st.binary(max_size=256))
    elif kind == "damaged":
        weights = damaged(files["pytorch_model.bin"], data.draw)
    else:
        buffer = io.BytesIO()
        torch.save(random_pickleable(data.draw), buffer)
        weights = buffer.getvalue()
    load_directory({"config.json": files["config.json"], "pytorch_model.bin": weights})


@SETTINGS
@given(data=st.data())
def test_attnlab_checkpoint_config(files, data):
    kind = data.draw(st.sampled_from(["random json", "mutated", "mutated in both files", "random bytes"]))
    weights = files[WEIGHTS_FILE]
    if kind == "random json":
        config = dumps(data.draw(JSON_VALUES))
    elif kind == "random bytes":
        config = data.draw(st.binary(max_size=64))
    else:
        payload = json.loads(files[CONFIG_FILE])
        keys = data.draw(st.lists(st.sampled_from([*GPTConfig().to_dict(), "config", "format", "save_id"]), max_size=3))
        for key in keys:
            where = payload if key in ("config", "format", "save_id") else payload["config"]
            if isinstance(where, dict):  # (the config itself may have been replaced by a list already)
                where[key] = data.draw(JSON_VALUES)
        config = dumps(payload)
        if kind == "mutated in both files" and isinstance(payload.get("config"), dict):
            from safetensors.torch import load, save

            metadata = {"format": str(payload.get("format")), "save_id": str(payload.get("save_id"))}
            metadata["config"] = json.dumps(payload["config"], sort_keys=True)
            weights = save(load(weights), metadata)
    load_directory({CONFIG_FILE: config, WEIGHTS_FILE: weights})


@SETTINGS
@given(data=st.data())
def test_tokenizer_json(files, data):
    kind = data.draw(st.sampled_from(["random json", "mutated", "random bytes", "damaged"]))
    if kind == "random json":
        content = dumps(data.draw(JSON_VALUES))
    elif kind == "random bytes":
        content = data.draw(st.binary(max_size=64))
    elif kind == "damaged":
        content = damaged(files["tokenizer.json"], data.draw)
    else:
        values = json.loads(files["tokenizer.json"])
        key = data.draw(st.sampled_from(sorted(values)))
        values[key] = data.draw(JSON_VALUES)
        content = dumps(values)
    with tempfile.TemporaryDirectory() as name:
        (Path(name) / "tokenizer.json").write_bytes(content)
        tokenizer = loads_or_refuses(lambda: load_tokenizer(name))
    if tokenizer is not None:
        prompt = data.draw(st.text(max_size=12))
        loads_or_refuses(lambda: tokenizer.decode(encode_prompt(tokenizer, prompt)))
