"""results.json / results.csv carry the documented fields; the table and notes show every row."""

import csv
import json

import pytest
from rich.console import Console

from attnlab.bench.report import format_bytes, results_notes, results_table, write_results

#: The fields every row must have (the issue's list); the JSON header's required keys.
ROW_FIELDS = {
    "impl",
    "mode",
    "device",
    "dtype",
    "batch",
    "seq_len",
    "d_model",
    "num_heads",
    "median_ms",
    "gflops",
    "peak_fraction",
    "peak_mem_bytes",
    "max_abs_err",
    "status",
}
HEADER_FIELDS = {"torch_version", "device_name", "num_threads", "peak_gflops", "memory_method", "flop_formula"}


def test_write_results_produces_json_csv_and_plot(tiny_result, tmp_path):
    written = write_results(tiny_result, tmp_path / "out")
    names = sorted(path.name for path in written.paths)
    assert names == ["bench.png", "results.csv", "results.json", "results.md"]  # no sweep, no sweep.png
    assert written.skipped == []

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert HEADER_FIELDS <= set(data["header"])
    assert data["header"]["peak_gflops"] > 0
    assert len(data["rows"]) == 4
    for row in data["rows"]:
        assert ROW_FIELDS <= set(row)
        assert row["status"] == "ok" and row["median_ms"] > 0
        assert row["peak_fraction"] is None or 0 < row["peak_fraction"] <= 1  # None: faster than the peak

    markdown = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| implementation | mode | median ms |")
    assert [line.split(" | ")[:2] for line in markdown[2:6]] == [["| " + r["impl"], r["mode"]] for r in data["rows"]]

    with (tmp_path / "out" / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert ROW_FIELDS <= set(csv_rows[0])
    assert [(r["impl"], r["mode"]) for r in csv_rows] == [(r["impl"], r["mode"]) for r in data["rows"]]
    assert [float(r["median_ms"]) for r in csv_rows] == [r["median_ms"] for r in data["rows"]]


def test_table_has_a_line_per_row(tiny_result):
    console = Console(width=200, record=True)
    console.print(results_table(tiny_result))
    text = console.export_text()
    for row in tiny_result.rows:
        assert any(row.impl in line and row.mode in line and "ok" in line for line in text.splitlines())
    assert "GFLOP/s" in text and "% peak" in text and "speed-up" in text


def test_notes_explain_rows_that_were_not_timed(tiny_result):
    for row in tiny_result.rows:
        row.note = ""  # a timed row may carry a note too (faster than the measured peak)
    tiny_result.rows[0].status, tiny_result.rows[0].note = "unsupported", "has no backward pass on cpu"
    assert results_notes(tiny_result) == ["sdpa forward: unsupported: has no backward pass on cpu"]


@pytest.mark.parametrize(
    ("num_bytes", "text"), [(None, "—"), (512, "512 B"), (1536, "1.5 KiB"), (3 * 2**20, "3.0 MiB"), (2**31, "2.0 GiB")]
)
def test_format_bytes(num_bytes, text):
    assert format_bytes(num_bytes) == text
