"""bench.png and sweep.png are written as real images, also when some rows were not timed."""

import copy

import pytest
from matplotlib.image import imread

from attnlab.bench.plots import plot_bars, plot_sweep


def _sweep_result(tiny_result):
    """The tiny run's rows at two sequence lengths (hand-made: plotting, not measuring, is under test)."""
    result = copy.deepcopy(tiny_result)
    longer = copy.deepcopy(result.rows)
    for row in longer:
        row.seq_len *= 2
        row.median_ms, row.p25_ms, row.p75_ms = 3 * row.median_ms, 3 * row.p25_ms, 3 * row.p75_ms
        row.peak_mem_bytes = (row.peak_mem_bytes or 0) + 2**20
    result.rows += longer
    result.rows[-1].status, result.rows[-1].median_ms = "oom", None
    result.header.config["sweep"] = {"key": "seq_len", "values": [32, 64]}
    return result


def test_bar_chart_is_an_image(tiny_result, tmp_path):
    tiny_result.rows[1].status, tiny_result.rows[1].median_ms = "unsupported", None
    path = plot_bars(tiny_result, tmp_path / "bench.png")
    height, width, _ = imread(path).shape
    assert width > 600 and height > 100


def test_sweep_plots_are_images(tiny_result, tmp_path):
    result = _sweep_result(tiny_result)
    assert imread(plot_sweep(result, tmp_path / "sweep.png")).shape[1] > 600
    assert imread(plot_bars(result, tmp_path / "bench.png")).shape[1] > 600


def test_sweep_plot_needs_a_sweep(tiny_result, tmp_path):
    with pytest.raises(ValueError, match="sweep"):
        plot_sweep(tiny_result, tmp_path / "sweep.png")
