"""``attnlab bench``: options reach the config, files are written, bad input exits 2 with a clear message."""

import json

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
