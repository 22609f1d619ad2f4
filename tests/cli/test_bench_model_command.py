"""attnlab bench --model: the whole-model benchmark through the CLI (structure only, no timing assertions)."""

import json

from attnlab.cli import main


def test_model_bench_writes_rows_for_each_implementation(tmp_path, capsys):
    argv = ["bench", "--model", "gpt2", "--layers", "1", "--impl", "sdpa,wrapper", "--prompt-len", "4"]
    argv += ["--new-tokens", "2", "--min-run-time", "0.01", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "model_results.json").read_text())
    assert payload["header"]["config"]["n_layers"] == 1
    assert payload["header"]["prompt_len"] == 4 and payload["header"]["device"] == "cpu"
    rows = {row["impl"]: row for row in payload["rows"]}
    assert rows["sdpa"]["decode_mode"] == "kv-cache"
    assert rows["wrapper"]["decode_mode"] == "recompute"
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert "prefill tokens/s" in capsys.readouterr().out


def test_layer_options_are_refused_with_model(capsys):
    assert main(["bench", "--model", "gpt2", "--sweep", "seq=8,16"]) == 2
    assert "--sweep do not apply with --model" in capsys.readouterr().err


def test_model_options_are_refused_without_model(capsys):
    assert main(["bench", "--layers", "2"]) == 2
    assert "--layers only apply with --model" in capsys.readouterr().err
