"""Property: ``attnlab generate`` with random arguments ends in success or in ONE error line with exit code 2.

Each example runs the real command in a subprocess (so a traceback, a crash or a hang is seen as the user
would see it) with random values: integers and floats (negative, huge, inf, nan), random text, ids lists,
nonexistent paths, a file where a directory is expected, a damaged checkpoint. Starting Python and torch
takes a few seconds per run, so the number of examples is small.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import attnlab
from attnlab.gpt import GPTConfig, GPTModel

RUN_TIMEOUT_S = 60  # a run takes a few seconds; a hang would take forever
ERROR_PREFIX = "attnlab generate: error: "
# flex compiles for ~20 s on a CPU before its first token: left out to keep each run short.
IMPLS = ["sdpa", "ch03", "wrapper", "einsum", "torch_mha", "flash_torch", "flash_triton"]
WORDS = ["every", "effort", "moves", "you", "the", "cat", "sat"]

TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
INTS = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, 1, 2, 3, 15, 16, 17, -1])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1e-320, 0.7, 1.0, 2.0])


def classify(result: subprocess.CompletedProcess) -> str:
    """ "success" or "error"; anything else (a traceback, another exit code, several error lines) fails.

    A minimal local version of the shared outcome classifier: stderr may hold argparse's usage block or the
    "loading ..." progress line before the single error line, and nothing after it."""
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    if result.returncode == 0:
        assert lines and re.match(r"\d+ tokens in ", lines[-1]), stderr
        return "success"
    assert result.returncode == 2, f"exit code {result.returncode}: {stderr}"
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert all(line.startswith(("usage:", " ", "loading ")) for line in lines[:-1]), stderr
    return "error"


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """{name: path}: a good checkpoint with a tokenizer, one without, damaged or missing ones, a file."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("cli_fuzz")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=16, context_length=64, d_model=8, n_layers=1, n_heads=2)
    model = GPTModel(config, attn_impl="sdpa")
    model.save(root / "good")
    model.save(root / "no_tokenizer")
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(root / "good" / "tokenizer.json"))
    model.save(root / "damaged")
    weights = root / "damaged" / "attnlab_gpt.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (root / "damaged" / "tokenizer.json").write_text("{")
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a directory")
    names = ["good", "no_tokenizer", "damaged", "empty", "a_file", "missing"]
    return {name: root / name for name in names}


def mostly(valid, wild):
    """Values drawn from ``valid`` three times in four, else from ``wild``: enough runs get to generate."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else wild)


def option(name, values):
    """``--name=value`` (the = form, so a value starting with '-' still reaches the command), or nothing."""
    return st.none() | values.map(lambda value: f"--{name}={value}")


@st.composite
def arguments(draw, places):
    weights = draw(mostly(st.just("good"), st.sampled_from(sorted(places))))
    argv = [f"--weights={places[weights]}"]
    if draw(st.booleans()):
        ids = st.lists(mostly(st.integers(0, 15), INTS), min_size=1, max_size=4).map(
            lambda ids: ",".join(map(str, ids))
        )
        argv.append(f"--ids={draw(mostly(ids, TEXT))}")
    else:
        words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)
        prompt = draw(mostly(words, TEXT | st.just(b"caf\xe9")))  # bytes: not UTF-8, as a shell may pass them
        argv.append(b"--prompt=" + prompt if isinstance(prompt, bytes) else f"--prompt={prompt}")
    for name, values in [
        ("max-new-tokens", mostly(st.integers(min_value=0, max_value=15), INTS | TEXT)),
        ("temperature", mostly(st.floats(min_value=0, max_value=3), FLOATS | TEXT)),
        ("top-k", mostly(st.integers(min_value=1, max_value=20), INTS | TEXT)),
        ("eos-id", mostly(st.integers(min_value=0, max_value=15), INTS | TEXT)),
        ("seed", mostly(st.integers(min_value=0, max_value=2**64 - 1), INTS | TEXT)),
        ("impl", mostly(st.sampled_from(IMPLS), TEXT)),
        (
            "device",
            mostly(st.sampled_from(["cpu", "auto"]), st.sampled_from(["cuda", "cuda:7", "mps", "meta", "xyz"]) | TEXT),
        ),
    ]:
        if (value := draw(option(name, values))) is not None:
            argv.append(value)
    if draw(st.booleans()):
        argv.append("--no-cache")
    return argv


def run_generate(argv):
    env = dict(os.environ)
    src = str(Path(attnlab.__file__).resolve().parents[1])  # this checkout's code, in the subprocess too
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", "import sys; from attnlab.cli import main; sys.exit(main())", "generate"]
    return subprocess.run(
        [*command, *argv],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=RUN_TIMEOUT_S,
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_arguments_succeed_or_fail_with_one_error_line(places, data):
    argv = data.draw(arguments(places))
    event(classify(run_generate(argv)))


def test_the_classifier_accepts_a_success_and_rejects_a_traceback(places):
    """The property above must be able to fail: check the classifier on known runs."""
    good = run_generate([f"--weights={places['good']}", "--prompt=every effort", "--max-new-tokens=2"])
    assert classify(good) == "success"
    refused = run_generate([f"--weights={places['good']}", "--ids=1", "--temperature=nan"])
    assert classify(refused) == "error" and "temperature must be >= 0" in refused.stderr
    crashed = subprocess.CompletedProcess([], 1, "", 'Traceback (most recent call last):\n  File "x"\nKeyError: 1\n')
    with pytest.raises(AssertionError):
        classify(crashed)
    two_lines = subprocess.CompletedProcess([], 2, "", f"{ERROR_PREFIX}one\n{ERROR_PREFIX}two\n")
    with pytest.raises(AssertionError):
        classify(two_lines)
