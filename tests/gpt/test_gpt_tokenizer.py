"""tokenizer.json: absent, damaged, or given a prompt that is not text: a one-line ValueError."""

import pytest

from attnlab.gpt.tokenizer import encode_prompt, load_tokenizer


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"a": 1}', b"\xff\xfe\x00", b"[" * 10_000])
def test_damaged_tokenizer_json_is_a_one_line_value_error(tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a readable tokenizer") as error_info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(error_info.value)


def test_absent_tokenizer_json_says_what_needs_it(tmp_path):
    with pytest.raises(ValueError, match="does not exist; a text prompt needs it"):
        load_tokenizer(tmp_path)


def test_prompts_that_are_not_text_or_encode_to_nothing_are_refused(tiny_hf):
    directory, _ = tiny_hf
    tokenizer = load_tokenizer(directory)
    assert encode_prompt(tokenizer, "every effort moves you") == tokenizer.encode("every effort moves you").ids
    with pytest.raises(ValueError, match="is not valid UTF-8 text"):
        encode_prompt(tokenizer, "caf\udce9")  # a byte that was not UTF-8, as Python passes it from argv
    with pytest.raises(ValueError, match="encodes to no tokens"):
        encode_prompt(tokenizer, "   ")
