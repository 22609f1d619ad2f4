"""``attnlab generate``: a Hugging Face checkpoint directory in, streamed tokens out, clear errors."""

import json

import pytest
import torch

from attnlab.cli import main

SENTENCES = ["every effort moves you forward", "the cat sat on the mat", "attention is all you need"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random GPT-2 saved by transformers, with a word-level tokenizer.json beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path_factory.mktemp("cli_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
    hf_model = GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(directory)
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory, hf_model, tokenizer


def hf_greedy(hf_model, ids, new):
    prompt = torch.tensor([ids])
    out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)
    return out[0].tolist()


def test_ids_without_tokenizer_print_the_hf_greedy_ids(checkpoint, tmp_path, capsys):
    directory, hf_model, _ = checkpoint
    for name in ("config.json", "model.safetensors"):  # a copy without tokenizer.json
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    assert main(["generate", "--weights", str(tmp_path), "--ids", "3,1,4", "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ",".join(map(str, hf_greedy(hf_model, [3, 1, 4], 6)))
    assert "6 tokens in" in captured.err and "KV cache" in captured.err


@pytest.mark.parametrize("extra", [[], ["--impl", "wrapper", "--no-cache"]])
def test_prompt_is_encoded_and_the_text_streamed(checkpoint, capsys, extra):
    directory, hf_model, tokenizer = checkpoint
    prompt = "every effort moves you"
    argv = ["generate", "--weights", str(directory), "--prompt", prompt, "--max-new-tokens", "5", *extra]
    assert main(argv) == 0
    expected = tokenizer.decode(hf_greedy(hf_model, tokenizer.encode(prompt).ids, 5))
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ids", "1,2", "--impl", "torch_mha"], "'torch_mha' has no KV-cache path"),
        (["--ids", "1,x"], "--ids must be comma-separated integers"),
        (["--ids", "1,999"], "token ids [999] are outside the vocabulary [0, 64)"),
        (["--ids", "1,2", "--max-new-tokens", "40"], "exceeds context_length 32"),
    ],
)
def test_bad_input_exits_2_with_the_reason(checkpoint, capsys, argv, message):
    directory, _, _ = checkpoint
    assert main(["generate", "--weights", str(directory), *argv]) == 2
    assert message in capsys.readouterr().err


def test_prompt_without_tokenizer_is_refused(tmp_path, capsys):
    assert main(["generate", "--weights", str(tmp_path), "--prompt", "hello"]) == 2
    assert "tokenizer.json does not exist; a text prompt needs it" in capsys.readouterr().err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    assert "attnlab generate --weights ./gpt2 --prompt" in capsys.readouterr().out


def test_stream_keeps_printing_after_decoding_changes_earlier_text(capsys):
    from attnlab.cli.generate import _Stream

    class Decoder:  # decodes ids to letters; id 9 renders as U+FFFD until another id follows it
        def decode(self, ids):
            text = "".join("?" if i == 9 else chr(ord("a") + i) for i in ids)
            return text[:-1] + "\ufffd" if ids[-1] == 9 else text.replace("?", "z")

    stream = _Stream(Decoder(), [9])  # the prompt itself ends in an incomplete character
    for token in (0, 1):
        stream.add(token)
    stream.finish()
    out = capsys.readouterr().out
    assert out.endswith("ab")  # the new tokens are printed even though the prompt's text changed


# -- every failure is exit code 2 and one line on stderr, found before any work it would waste ---------------


def error_line(capsys, argv):
    """Run ``attnlab generate ARGV``; it must fail with exit code 2 and ONE error line (after the optional
    "loading ..." progress line). Returns (the error line, stdout)."""
    assert main(["generate", *argv]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("loading ")]
    assert len(lines) == 1 and lines[0].startswith("attnlab generate: error: "), captured.err
    return lines[0], captured.out


def copy_of(checkpoint, tmp_path, names=("config.json", "model.safetensors", "tokenizer.json")):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for name in names:
        (directory / name).write_bytes((checkpoint / name).read_bytes())
    return directory


def test_ids_do_not_need_or_read_tokenizer_json(checkpoint, tmp_path, capsys):
    directory, hf_model, _ = checkpoint
    weights = copy_of(directory, tmp_path)
    (weights / "tokenizer.json").write_text("{ not a tokenizer")
    assert main(["generate", "--weights", str(weights), "--ids", "3,1,4", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() == ",".join(map(str, hf_greedy(hf_model, [3, 1, 4], 3)))
    line, _ = error_line(capsys, ["--weights", str(weights), "--prompt", "every effort"])
    assert "tokenizer.json is not a readable tokenizer" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "nan"], "temperature must be >= 0 (0 is greedy) and finite, got nan"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-k", "0"], "top_k must be a positive integer or None, got 0"),
        (["--max-new-tokens", "-5"], "max_new_tokens must be a non-negative integer, got -5"),
        (["--eos-id", "-1"], "eos_id must be a token id (an integer >= 0) or None, got -1"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**64), got -1"),
        (["--device", "xyz"], "unknown device 'xyz'"),
        (["--impl", "nope"], "unknown attention implementation 'nope'"),
    ],
)
def test_generation_arguments_are_checked_before_loading_or_printing(tmp_path, capsys, argv, message):
    (tmp_path / "config.json").write_text("[]")  # a broken checkpoint: it must not even be looked at
    line, out = error_line(capsys, ["--weights", str(tmp_path), "--ids", "1", *argv])
    assert message in line and out == ""


def test_prompt_too_long_for_the_context_is_refused_before_the_prompt_is_printed(checkpoint, capsys):
    directory, _, _ = checkpoint
    line, out = error_line(capsys, ["--weights", str(directory), "--ids", "1,2,3", "--max-new-tokens", "30"])
    assert "prompt length 3 + max_new_tokens 30 = 33 exceeds context_length 32" in line
    assert out == ""


def damage(directory, kind):
    config = directory / "config.json"
    weights = directory / "model.safetensors"
    if kind == "config list":
        config.write_text("[1, 2]")
    elif kind == "config string number":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"n_layer": "2"}))
    elif kind == "config bool":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"n_head": True}))
    elif kind == "huge n_layer":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"n_layer": 10**9}))
    elif kind == "empty safetensors":
        weights.write_bytes(b"")
    elif kind == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[:-9])
    elif kind == "bare tensor bin":
        weights.unlink()
        torch.save(torch.zeros(3), directory / "pytorch_model.bin")
    elif kind == "integer tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"].to(torch.int64)
        save_file(state, weights)
    elif kind == "missing tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        del state["transformer.ln_f.bias"]
        save_file(state, weights)
    elif kind == "attnlab config without config":
        (directory / "attnlab_gpt.json").write_text('{"format": "attnlab-gpt/2"}')


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("config list", "holds a JSON list, expected an object"),
        ("config string number", "n_layer must be a positive integer, got '2' (str)"),
        ("config bool", "n_head must be a positive integer, got True (bool)"),
        ("huge n_layer", "config.json has n_layer=1000000000, but the tensors hold 2 layers"),
        ("empty safetensors", "is not a readable safetensors file"),
        ("truncated safetensors", "is not a readable safetensors file"),
        ("bare tensor bin", "holds a Tensor, expected a dict of tensor names to tensors"),
        ("integer tensor", "tensor 'wpe.weight' has dtype I64; weights must be floating-point"),
        ("missing tensor", "missing: ['ln_f.bias']"),
        ("attnlab config without config", "has no 'config' object"),
    ],
)
def test_a_damaged_checkpoint_is_one_error_line(checkpoint, tmp_path, capsys, kind, message):
    directory, _, _ = checkpoint
    weights = copy_of(directory, tmp_path)
    damage(weights, kind)
    line, out = error_line(capsys, ["--weights", str(weights), "--ids", "1,2"])
    assert message in line and out == ""


def test_weights_that_are_a_file_or_absent_are_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in error_line(capsys, ["--weights", str(tmp_path / "file"), "--ids", "1"])[0]
    assert "does not exist" in error_line(capsys, ["--weights", str(tmp_path / "absent"), "--ids", "1"])[0]


def test_flash_torch_generates_from_a_checkpoint_with_dropout(checkpoint, capsys):
    directory, hf_model, _ = checkpoint  # transformers' default config: attn_pdrop = resid_pdrop = 0.1
    assert (
        main(
            [
                "generate",
                "--weights",
                str(directory),
                "--ids",
                "3,1,4",
                "--max-new-tokens",
                "4",
                "--impl",
                "flash_torch",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == ",".join(map(str, hf_greedy(hf_model, [3, 1, 4], 4)))


def test_an_empty_id_is_an_error_not_skipped():
    from attnlab.cli.generate import _parse_ids

    with pytest.raises(ValueError, match="--ids must be comma-separated integers"):
        _parse_ids("1,,2")
