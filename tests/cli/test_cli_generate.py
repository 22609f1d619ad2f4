"""``attnlab generate``: a Hugging Face checkpoint directory in, streamed tokens out, clear errors."""

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
    assert "--prompt needs" in capsys.readouterr().err


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
