"""attnlab bench --model --decode: bad options end in one error line before any work (no timing here)."""

import pytest

from attnlab.cli import main


def _error_line(capsys, argv):
    """``attnlab bench ARGV`` must exit 2 with one stderr line ``attnlab bench: error: ...`` and no run."""
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab bench: error: "), captured.err
    assert captured.out == "", "refused before the run, not after it"
    return lines[0]


DECODE = ["--model", "gpt2", "--decode", "--device", "cpu"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*DECODE, "--context", "8,x"], "--context takes comma-separated integers, got '8,x'"),
        ([*DECODE, "--context", "1020"], "context 1020 + new_tokens 16 = 1036 exceeds the model's context_length 1024"),
        ([*DECODE, "--context", "0"], "context must be a positive integer, got 0"),
        ([*DECODE, "--quant", "int3"], "unknown quant 'int3'; choose from none, int8, int8_dynamic, int4"),
        ([*DECODE, "--quant", "int4"], "quant 'int4' needs device cuda and dtype bfloat16"),
        ([*DECODE, "--impl", "wrapper"], "implementation 'wrapper' has no KV-cache path"),
        ([*DECODE, "--prompt-len", "8"], "--prompt-len does not apply with --decode"),
        ([*DECODE, "--sweep", "seq=8,16"], "--sweep does not apply with --model"),
        ([*DECODE, "--new-tokens", "0"], "new_tokens must be a positive integer, got 0"),
        ([*DECODE, "--min-run-time", "nan"], "min_run_time must be a finite number of seconds"),
        (["--model", "gpt2", "--quant", "int8"], "--quant only apply with --decode"),
        (["--context", "8"], "--context only apply with --decode --model"),
        (["--decode"], "--decode only apply with --model"),
        ([*DECODE, "--compile"], "compile needs decoder=True (CLI: --decoder)"),
        ([*DECODE, "--decoder", "--impl", "ch03"], "unknown attention backend 'ch03'"),
        (["--model", "gpt2", "--decoder"], "--decoder only apply with --decode"),
    ],
)
def test_bad_options_end_in_one_line(capsys, argv, message):
    assert message in _error_line(capsys, argv)


def test_an_unwritable_output_is_refused_before_the_run(capsys, tmp_path):
    (tmp_path / "decode_results.json").mkdir()  # a directory where the results file goes
    line = _error_line(capsys, [*DECODE, "--layers", "1", "--context", "8", "--out", str(tmp_path)])
    assert "decode_results.json" in line
