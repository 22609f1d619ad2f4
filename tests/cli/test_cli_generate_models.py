"""``attnlab generate`` on every architecture of attnlab.models: Hugging Face checkpoints saved by transformers in
the test, greedy tokens equal to transformers', the checkpoint's tokenizer.json and end-of-sequence ids, and the
attention backend (``--attn-impl``) checked against what the architecture needs before anything is loaded."""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # the tiny checkpoint builders
from tiny_hf import TINY, load_hf, save_tiny

from attnlab.cli import main

NAMES = [*TINY, "gpt2"]
WORDS = "every effort moves you forward the cat sat on mat attention is all need".split()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {name: save_tiny(name, tmp_path_factory.mktemp(name)) for name in NAMES}


def hf_greedy(directory, ids, new):
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = load_hf(directory).generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new)
    return out[0, len(ids) :].tolist()


def run_ok(capsys, argv):
    assert main(["generate", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr()


def error_line(capsys, argv):
    """``attnlab generate ARGV`` must exit 2 with ONE error line (after an optional "loading ..." line)."""
    try:
        code = main(["generate", *argv])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith(("loading ", "usage:", " "))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab generate: error: "), captured.err
    return lines[0], captured.out


@pytest.mark.parametrize("name", NAMES)
def test_greedy_ids_match_transformers(name, checkpoints, capsys):
    directory = checkpoints[name]
    argv = ["--weights", str(directory), "--ids", "3,1,4", "--max-new-tokens", "8"]
    if name == "gpt2":
        argv += ["--attn-impl", "naive"]  # GPT-2 through attnlab.models (without it: attnlab.gpt, as before)
    captured = run_ok(capsys, argv)
    assert captured.out.strip() == ",".join(map(str, [3, 1, 4, *hf_greedy(directory, [3, 1, 4], 8)]))
    assert "8 tokens in" in captured.err


def test_without_a_backend_the_first_that_does_every_feature_is_used(checkpoints, capsys):
    # Gemma 2 needs a sliding window and a logit softcap: neither sdpa nor sdpa_mask does both.
    captured = run_ok(capsys, ["--weights", str(checkpoints["gemma2"]), "--ids", "5,6", "--max-new-tokens", "2"])
    assert "loading" in captured.err and " on flash_torch ..." in captured.err
    captured = run_ok(capsys, ["--weights", str(checkpoints["llama"]), "--ids", "5,6", "--max-new-tokens", "2"])
    assert " on sdpa ..." in captured.err


def test_no_cache_gives_the_same_tokens(checkpoints, capsys):
    directory = checkpoints["mistral"]  # 12 new tokens: past its window of 5
    argv = ["--weights", str(directory), "--ids", "7,8,9", "--max-new-tokens", "12", "--attn-impl", "naive"]
    with_cache = run_ok(capsys, argv).out
    assert run_ok(capsys, [*argv, "--no-cache"]).out == with_cache
    assert with_cache.strip() == ",".join(map(str, [7, 8, 9, *hf_greedy(directory, [7, 8, 9], 12)]))


@pytest.fixture(scope="module")
def with_tokenizer(checkpoints, tmp_path_factory):
    """A copy of the tiny Qwen 3 checkpoint with a word-level tokenizer.json and end-of-sequence ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("qwen3_tok")
    for path in checkpoints["qwen3"].iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory, tokenizer


def test_prompt_is_encoded_with_the_checkpoints_tokenizer(with_tokenizer, capsys):
    directory, tokenizer = with_tokenizer
    prompt = "the cat sat on"
    out = run_ok(capsys, ["--weights", str(directory), "--prompt", prompt, "--max-new-tokens", "6"]).out
    ids = tokenizer.encode(prompt).ids
    assert out.strip() == tokenizer.decode(ids + hf_greedy(directory, ids, 6))


def test_generation_stops_at_the_checkpoints_end_ids(with_tokenizer, tmp_path, capsys):
    directory, _ = with_tokenizer
    greedy = hf_greedy(directory, [3, 1, 4], 8)
    weights = tmp_path / "ckpt"
    weights.mkdir()
    for path in directory.iterdir():
        (weights / path.name).write_bytes(path.read_bytes())
    stop = greedy[3]  # the 4th new token ends the sequence (generation_config.json may list several ids)
    (weights / "generation_config.json").write_text(json.dumps({"eos_token_id": [96, stop]}))
    expected = greedy[: greedy.index(stop) + 1]
    captured = run_ok(capsys, ["--weights", str(weights), "--ids", "3,1,4", "--max-new-tokens", "8"])
    assert captured.out.strip() == ",".join(map(str, [3, 1, 4, *expected]))
    assert f"{len(expected)} tokens in" in captured.err


def test_prompts_file_runs_every_prompt_through_the_engine(with_tokenizer, tmp_path, capsys):
    directory, tokenizer = with_tokenizer
    prompts = ["the cat sat on", "every effort moves you", "attention is"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n\n")  # blank lines are skipped
    argv = ["--weights", str(directory), "--prompts-file", str(path), "--max-new-tokens", "5", "--max-batch", "2"]
    captured = run_ok(capsys, argv)
    expected = []
    for prompt in prompts:  # each completion as transformers gives it for that prompt alone, in file order
        ids = tokenizer.encode(prompt).ids
        expected.append(tokenizer.decode(ids + hf_greedy(directory, ids, 5)))
    assert captured.out.splitlines() == expected
    assert "3 prompts, 15 tokens in" in captured.err and "serving engine" in captured.err


def test_prompts_file_errors_are_one_line(with_tokenizer, tmp_path, capsys):
    directory, _ = with_tokenizer
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    line, _ = error_line(capsys, ["--weights", str(directory), "--prompts-file", str(empty)])
    assert "holds no prompt (one per line)" in line
    line, _ = error_line(capsys, ["--weights", str(directory), "--prompts-file", str(tmp_path / "missing.txt")])
    assert "does not exist or is not a file" in line
    line, _ = error_line(capsys, ["--weights", str(directory), "--prompts-file", str(empty), "--impl", "ch03"])
    assert "choose an --attn-impl, not --impl" in line


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        (
            "mistral",
            ["--attn-impl", "sdpa"],
            "the sdpa backend does not support window, which this mistral model needs (sliding window 5); "
            "backends that run it on cpu: naive, sdpa_mask, ",
        ),
        (
            "gemma2",
            ["--attn-impl", "sdpa_mask"],
            "the sdpa_mask backend does not support softcap, which this gemma2 model needs (attention logit "
            "softcap 50); backends that run it on cpu: naive, flex, flash_torch",
        ),
        ("llama", ["--attn-impl", "nope"], "unknown attention implementation 'nope'; use one of: naive, sdpa"),
        ("llama", ["--impl", "einsum"], "a llama checkpoint runs on attnlab.models, whose attention is a backend"),
        ("llama", ["--impl", "wrapper", "--attn-impl", "naive"], "not allowed with argument --impl"),
        ("llama", ["--max-new-tokens", "94"], "prompt length 3 + max_new_tokens 94 = 97 exceeds context_length 96"),
        ("llama", ["--ids", "1,97"], "token ids [97] are outside the vocabulary [0, 97)"),
        ("llama", ["--eos-id", "97"], "eos_id must be a token id in [0, 97), got 97"),
    ],
)
def test_bad_choices_are_one_error_line_before_any_output(name, argv, message, checkpoints, capsys):
    ids = [] if "--ids" in argv else ["--ids", "1,2,3"]
    line, out = error_line(capsys, ["--weights", str(checkpoints[name]), *ids, *argv])
    assert message in line and out == ""


def test_an_unsupported_config_field_is_named(checkpoints, tmp_path, capsys):
    for path in checkpoints["llama"].iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"hidden_act": "relu"}))
    line, _ = error_line(capsys, ["--weights", str(tmp_path), "--ids", "1"])
    assert "hidden_act='relu' is not supported by attnlab" in line
