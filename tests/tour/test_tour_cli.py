"""``attnlab tour``: the printed output holds the book's values, in the chapter's order.

Values as printed in chapter 3 of the book; others derived here from attnlab.chapter3's
classes (checked against the book in tests/test_chapter3.py), formatted with 4 decimals as torch prints.
"""

import contextlib
import io
import re

import pytest
import torch

from attnlab.chapter3 import MultiHeadAttention, SelfAttentionV2, example_inputs
from attnlab.cli import main
from attnlab.tour import SECTIONS


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["tour", *argv])
    return rc, out.getvalue(), err.getvalue()


def row(*numbers):
    """A regex for one printed row: torch pads columns with spaces (e.g. "[-0.4519,  0.2216]")."""
    return r"\[\s*" + r",\s+".join(re.escape(n) for n in numbers) + r"\s*\]"


def printed(tensor_row):
    return [f"{v:.4f}" for v in tensor_row.tolist()]


@pytest.fixture(scope="module")
def output():
    rc, out, _ = run_cli("--move-to", "meta")
    assert rc == 0
    return out


BOOK_ROWS = {  # as printed in chapter 3 of the book
    "weight-free scores": ("0.9544", "1.4950", "1.4754", "0.8434", "0.7070", "1.0865"),
    "weight-free softmax weights": ("0.1385", "0.2379", "0.2333", "0.1240", "0.1082", "0.1581"),
    "weight-free context vector": ("0.4419", "0.6515", "0.5683"),
    "all context vectors, first row": ("0.4421", "0.5931", "0.5790"),
    "all context vectors, last row": ("0.4177", "0.6503", "0.5645"),
    "query for journey": ("0.4306", "1.4551"),
    "v1 class, first row": ("0.2996", "0.8053"),
    "causal class, first row": ("-0.4519", "0.2216"),
    "causal class, last row": ("-0.5299", "-0.1081"),
    "dropout demo, first row": ("2.", "2.", "0.", "2.", "2.", "0."),
}


@pytest.mark.parametrize("name", BOOK_ROWS)
def test_output_prints_the_books_values(output, name):
    assert re.search(row(*BOOK_ROWS[name]), output), name


def test_output_prints_values_of_the_seeded_classes(output):
    inputs = example_inputs()
    torch.manual_seed(789)
    assert re.search(row(*printed(SelfAttentionV2(3, 2)(inputs)[0])), output)
    torch.manual_seed(123)
    context_vecs = MultiHeadAttention(3, 2, 6, 0.0, num_heads=2)(torch.stack((inputs, inputs)))
    assert re.search(row(*printed(context_vecs[0, 0])), output)
    assert re.search(row(*printed(context_vecs[0, -1])), output)
    for shape in ("torch.Size([2, 6, 3])", "torch.Size([2, 6, 4])", "torch.Size([2, 6, 2])"):
        assert shape in output


def test_sections_are_printed_in_the_chapters_order(output):
    positions = [output.index(f"[{name}]") for name in SECTIONS]
    assert positions == sorted(positions)


def test_one_section_prints_only_that_section():
    rc, out, _ = run_cli("--section", "causal-class")
    assert rc == 0
    assert "[causal-class]" in out and "[weight-free]" not in out and "[buffers]" not in out
    assert re.search(row("-0.4519", "0.2216"), out)


def test_unknown_section_fails_and_lists_the_valid_ones():
    rc, out, err = run_cli("--section", "attention")
    assert rc != 0 and out == ""
    assert "unknown section 'attention'" in err
    for name in SECTIONS:
        assert name in err


def test_plots_option_writes_pngs(tmp_path):
    rc, out, _ = run_cli("--section", "multi-head", "--plots", str(tmp_path))
    assert rc == 0
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["multi_head_attn_weights.png"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 1 heatmap(s)" in out


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--help"])
    assert exit_info.value.code == 0
    assert "example: attnlab tour" in capsys.readouterr().out


def _error_line(*argv):
    rc, out, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("attnlab tour: error: "), err
    assert out == "", "refused before the tour, not after it"
    return lines[0]


def test_plots_onto_a_file_or_under_one_are_refused_before_the_tour(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory")
    assert f"output directory '{afile}' exists and is not a directory" in _error_line("--plots", str(afile))
    # Under a regular file nothing can be created, not even by root (for whom chmod does not stop writes).
    line = _error_line("--plots", str(afile / "sub"))
    assert f"cannot create output directory '{afile / 'sub'}': '{afile}' is not a directory" in line
    assert "empty string" in _error_line("--plots", "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_move_to_an_absent_cuda_is_refused():
    line = _error_line("--section", "buffers", "--move-to", "cuda")
    assert "move_to 'cuda': no such device on this machine" in line and "use meta" in line


@pytest.mark.parametrize("device", ["xla", "gpu0"])
def test_move_to_a_device_the_lesson_cannot_use_is_refused(device):
    assert f"move_to '{device}'" in _error_line("--move-to", device)
