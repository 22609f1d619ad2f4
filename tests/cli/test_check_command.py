"""The attnlab CLI's check command: table, exit codes, help."""

import pytest

from attnlab.cli import main


def test_check_prints_a_passing_table(capsys):
    assert main(["check", "--impl", "ch03,einsum", "--seq-len", "4", "--d-in", "6", "--d-out", "8"]) == 0
    out = capsys.readouterr().out
    assert "ch03" in out and "einsum" in out
    assert out.count("pass") == 2


def test_check_unknown_implementation_exits_2_listing_valid_names(capsys):
    assert main(["check", "--impl", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown attention implementation 'nope'" in err and "sdpa" in err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--help"])
    assert exit_info.value.code == 0
    assert "example: attnlab check" in capsys.readouterr().out


def test_check_takes_the_modern_options_and_skips_with_a_reason(capsys):
    argv = ["check", "--impl", "einsum,wrapper", "--seq-len", "5", "--d-in", "6", "--d-out", "8", "--heads", "4"]
    assert main([*argv, "--kv-heads", "2", "--window", "3", "--softcap", "2.5", "--sinks"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the title may wrap
    assert out.count("pass") == 1 and out.count("skipped") == 1
    assert "4 heads, kv heads 2, window 3, softcap 2.5, sinks (tolerance" in out
