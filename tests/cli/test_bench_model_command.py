"""attnlab bench --model: the whole-model benchmark through the CLI (structure only, no timing assertions)."""

import json
import subprocess
import sys

import pytest

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
    assert "--sweep does not apply with --model" in capsys.readouterr().err


def test_model_options_are_refused_without_model(capsys):
    assert main(["bench", "--layers", "2"]) == 2
    assert "--layers only apply with --model" in capsys.readouterr().err


SMALL = ["--model", "gpt2", "--layers", "1", "--prompt-len", "4", "--new-tokens", "2", "--device", "cpu"]


def _error_line(capsys, argv):
    """``attnlab bench ARGV`` must exit 2 with one stderr line ``attnlab bench: error: ...`` and no run."""
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab bench: error: "), captured.err
    assert captured.out == "", "refused before the run, not after it"
    return lines[0]


def test_a_timing_budget_that_never_ends_is_refused_not_run():
    code = "import sys; from attnlab.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["bench", *SMALL, "--impl", "sdpa", "--min-run-time", "inf"]
    # In a subprocess with a deadline: before the fix this ran forever.
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.strip()
        == "attnlab bench: error: min_run_time must be a finite number of seconds in (0, 3600], got inf"
    )


@pytest.mark.parametrize("impl", ["", " , "])
def test_an_empty_selection_is_an_error_not_every_implementation(capsys, impl):
    assert "no implementation selected" in _error_line(capsys, [*SMALL, "--impl", impl])


def test_out_under_a_file_is_refused_before_the_run(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory")
    line = _error_line(capsys, [*SMALL, "--impl", "sdpa", "--out", str(afile / "sub")])
    assert f"'{afile}' is not a directory" in line


@pytest.mark.parametrize(("option", "value"), [("--batch", "1000000000000"), ("--layers", "1000000000")])
def test_a_model_no_machine_holds_is_refused_with_the_estimate(capsys, option, value):
    argv = ["--model", "gpt2", "--impl", "sdpa", "--prompt-len", "4", "--new-tokens", "2", option, value]
    line = _error_line(capsys, argv)
    assert "benchmarking this model" in line and "GiB of cpu memory, but only" in line


def test_bad_sizes_name_the_value(capsys):
    assert "prompt_len must be a positive integer, got 0" in _error_line(capsys, [*SMALL, "--prompt-len", "0"])
    assert "seed must be an integer" in _error_line(capsys, [*SMALL, "--seed", str(2**70)])
