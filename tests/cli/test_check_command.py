"""The attnlab CLI's check command: table, exit codes (0 pass, 1 a failed comparison, 2 bad input), help."""

import re

import pytest
import torch

from attnlab.cli import main
from attnlab.implementations import IMPLEMENTATIONS
from attnlab.implementations.sdpa import SDPAAttention


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


def _one_line_error(capsys, argv):
    """Run ``attnlab check ARGV``; it must exit 2 with one stderr line ``attnlab check: error: ...``."""
    try:
        code = main(["check", *argv])
    except SystemExit as exit_info:  # argparse's errors exit instead of returning
        code = exit_info.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnlab check: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--heads", "0"], "num_heads must be a positive integer, got 0"),
        (["--batch", "0"], "batch must be a positive integer, got 0"),
        (["--d-in", "0"], "d_in must be a positive integer, got 0"),
        (["--seq-len", "-3"], "seq_len must be a positive integer, got -3"),
        (["--impl", ""], "no implementation selected"),
        (["--impl", " , "], "no implementation selected"),
        (["--device", "gpu0"], "unknown device 'gpu0'"),
        (["--batch", "two"], "argument --batch: invalid int value: 'two'"),
        (["--impl", "sdpa", "stray"], "unrecognized arguments: stray"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert message in _one_line_error(capsys, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_cuda_is_one_line_and_exit_code_2(capsys):
    assert "device 'cuda' is not available" in _one_line_error(capsys, ["--impl", "sdpa", "--device", "cuda"])


def test_a_check_too_large_for_memory_is_refused_with_the_estimate(capsys):
    argv = ["--impl", "sdpa", "--seq-len", "100000", "--d-in", "8", "--d-out", "8", "--heads", "1"]
    line = _one_line_error(capsys, argv)
    # The float64 reference alone keeps terabytes for its gradients: more than any test machine has.
    assert re.search(r"needs about [\d,.]+ GiB of cpu memory, but only [\d,.]+ GiB is available \(", line)


class _NotCausal(SDPAAttention):
    """A deliberately wrong implementation: it lets queries see the future."""

    def attend(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no causal mask
        return self.out_proj(self.merge_heads(out))


def test_a_failed_comparison_exits_1_not_2(monkeypatch, capsys):
    monkeypatch.setitem(IMPLEMENTATIONS, "not_causal", _NotCausal)
    assert main(["check", "--impl", "sdpa,not_causal", "--seq-len", "5"]) == 1
    captured = capsys.readouterr()
    assert "fail" in captured.out and captured.err == ""
