"""``attnlab bench``: options reach the config, files are written, bad input exits 2 with a clear message."""

import json
import re
import subprocess
import sys

import pytest
import torch

from attnlab.cli import build_parser, main
from attnlab.cli.bench import config_from_args

TINY_ARGS = ["--batch", "1", "--d-model", "16", "--heads", "2", "--min-run-time", "0.01", "--no-memory"]


def _config(*argv):
    return config_from_args(build_parser().parse_args(["bench", *argv]))


def test_options_override_the_preset():
    config = _config("--preset", "notebook", "--seq", "64", "--impl", "sdpa,ch03", "--mode", "forward")
    assert (config.batch, config.seq_len, config.d_model, config.num_heads) == (8, 64, 768, 12)
    assert config.impls == ("sdpa", "ch03") and config.modes == ("forward",)
    assert _config("--mode", "both").modes == ("forward", "backward")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default preset differs on a GPU")
def test_default_preset_on_cpu_is_quick():
    assert _config().preset == "quick"


def test_sweep_run_writes_all_files(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        ["bench", "--impl", "sdpa,flex", "--mode", "backward", "--sweep", "seq=8,16", *TINY_ARGS, "--out", str(out)]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bench.png",
        "results.csv",
        "results.json",
        "results.md",
        "sweep.png",
    ]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["impl"], r["seq_len"], r["status"]) for r in rows] == [
        ("sdpa", 8, "ok"),
        ("flex", 8, "unsupported"),
        ("sdpa", 16, "ok"),
        ("flex", 16, "unsupported"),
    ]
    printed = capsys.readouterr().out
    assert "flex backward (seq_len 8): unsupported: has no backward pass on cpu" in printed


def test_unknown_implementation_lists_the_valid_ones(capsys):
    assert main(["bench", "--impl", "sdpa,flash9000", *TINY_ARGS]) == 2
    error = capsys.readouterr().err
    assert "unknown attention implementation 'flash9000'; valid names:" in error and "sdpa" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_device_is_a_clear_error(capsys):
    assert main(["bench", "--device", "cuda", *TINY_ARGS]) == 2
    assert "device 'cuda' is not available" in capsys.readouterr().err


def test_bad_sweep_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--sweep", "dropout=0.1"])
    assert exit_info.value.code == 2
    assert "cannot sweep 'dropout'" in capsys.readouterr().err


def _error_line(capsys, argv):
    """Run ``attnlab bench ARGV`` in-process; it must exit 2 with one stderr line ``attnlab bench: error: ...``."""
    try:
        code = main(["bench", *argv])
    except SystemExit as exit_info:  # argparse's errors exit instead of returning
        code = exit_info.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab bench: error: "), captured.err
    assert captured.out == "", "refused before the run, not after it"
    return lines[0]


def _run_in_subprocess(argv, timeout=120):
    """``attnlab ARGV`` in a fresh process with a deadline: a hang fails the test instead of stalling it."""
    code = "import sys; from attnlab.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("seconds", ["inf", "nan"])
def test_a_timing_budget_that_never_ends_is_refused_not_run(seconds):
    done = _run_in_subprocess(["bench", *TINY_ARGS, "--impl", "sdpa", "--min-run-time", seconds])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        f"attnlab bench: error: min_run_time must be a finite number of seconds in (0, 3600], got {seconds}"
    )


@pytest.mark.parametrize("impl", ["", " , "])
def test_an_empty_selection_is_an_error(capsys, impl):
    assert "no implementation selected" in _error_line(capsys, ["--impl", impl, *TINY_ARGS])


def test_out_onto_a_file_or_under_one_is_refused_before_the_run(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory")
    line = _error_line(capsys, [*TINY_ARGS, "--impl", "sdpa", "--out", str(afile)])
    assert f"output directory '{afile}' exists and is not a directory" in line
    # Under a regular file nothing can be created, not even by root (for whom chmod does not stop writes).
    line = _error_line(capsys, [*TINY_ARGS, "--impl", "sdpa", "--out", str(afile / "sub")])
    assert f"cannot create output directory '{afile / 'sub'}': '{afile}' is not a directory" in line


def test_a_swept_size_given_as_well_is_refused(capsys):
    line = _error_line(capsys, [*TINY_ARGS, "--impl", "sdpa", "--seq", "32", "--sweep", "seq=8,16"])
    assert "seq_len 32 is given and also swept over [8, 16]; give one" in line


def test_sizes_no_machine_holds_are_refused_with_the_estimate(capsys):
    argv = ["--batch", "1", "--seq", "200000", "--d-model", "8", "--heads", "1", "--impl", "ch03,wrapper"]
    line = _error_line(capsys, [*argv, "--min-run-time", "0.01", "--no-memory"])
    assert "no case of this benchmark fits in memory" in line and "GiB is available" in line


def test_half_precision_on_the_cpu_finishes_and_never_shows_a_share_above_100_percent(tmp_path, capsys):
    argv = ["bench", "--dtype", "float16", "--impl", "sdpa,ch03", "--mode", "forward", "--seq", "32", *TINY_ARGS]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bench [0/3] measuring the peak of cpu:" in out  # progress lines, even without a terminal
    shares = [float(share) for share in re.findall(r"([\d.]+)%", out)]
    assert all(share <= 100 for share in shares)
    header = json.loads((tmp_path / "results.json").read_text())["header"]
    assert "float16 matmul" in header["peak_method"]
