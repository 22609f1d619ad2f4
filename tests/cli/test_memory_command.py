"""``attnlab memory``: the KV-cache table of a config, its help example, one-line errors."""

import json

import pytest
import torch

from attnlab.cli import main
from attnlab.models.memory import kv_cache_bytes, read_model_config

MISTRAL = dict(
    model_type="mistral", vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, sliding_window=8,
)  # fmt: skip
GEMMA2 = dict(
    model_type="gemma2", vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=1, head_dim=16, intermediate_size=48, max_position_embeddings=64, sliding_window=8,
)  # fmt: skip


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GEMMA2))
    return tmp_path


def test_table_shows_each_layer_kind_and_the_total(config_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # one table row per line
    assert main(["memory", "--model", str(config_dir), "--context", "32", "--batch", "3", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    report = kv_cache_bytes(read_model_config(config_dir), 32, 3, torch.float32)
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    # Gemma 2 alternates sliding (window 8, plus one spare slot) and full layers: 2 of each, 1 kv head of 16.
    assert f"{2 * 2 * 3 * 16 * 9 * 4:,}" in lines["sliding window 8"] and " 9 " in lines["sliding window 8"]
    assert f"{2 * 2 * 3 * 16 * 32 * 4:,}" in lines["full attention"]
    assert f"{report.total_bytes:,}" in lines["total"]
    assert "batch 3, context 32, float32" in " ".join(out.split())


def test_a_config_json_path_gives_the_same_table(config_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["memory", "--model", str(config_dir), "--context", "16"]) == 0
    from_dir = capsys.readouterr().out
    assert main(["memory", "--model", str(config_dir / "config.json"), "--context", "16"]) == 0
    from_file = capsys.readouterr().out
    assert from_file[from_file.index("┏") :] == from_dir[from_dir.index("┏") :]  # the title names the path given


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["memory", "--help"])
    assert exit_info.value.code == 0
    assert "attnlab memory --model ./Llama-3.1-8B --context 8192" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--context", "65"], "context 65 exceeds the model's context_length 64"),
        (["--batch", "0"], "batch must be a positive integer, got 0"),
        (["--dtype", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, message):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL))
    try:
        code = main(["memory", "--model", str(tmp_path), *argv])
    except SystemExit as exit_info:  # argparse's errors exit instead of returning
        code = exit_info.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab memory: error: ") and message in lines[0]


def test_an_unsupported_model_type_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL | {"model_type": "bert"}))
    assert main(["memory", "--model", str(tmp_path)]) == 2
    assert "model_type 'bert' is not supported" in capsys.readouterr().err
