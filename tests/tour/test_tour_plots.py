"""Heatmaps: valid PNG files, one per plot of the sections run, readable by matplotlib."""

import matplotlib.image
import pytest
import torch

from attnlab.tour import run_tour, write_plots
from attnlab.tour.plots import PLOTS, save_heatmaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_full_tour_writes_every_plot(tmp_path, full_tour):
    paths = write_plots(tmp_path / "plots", full_tour)
    assert [p.name for p in paths] == [plot.filename for plot in PLOTS]
    assert len(paths) == 5
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        assert_png(path)


@pytest.mark.parametrize(
    ("section", "expected"),
    [("causal", ["causal_mask.png", "causal_dropout.png"]), ("batched-matmul", [])],
)
def test_one_section_writes_its_own_plots(tmp_path, section, expected):
    paths = write_plots(tmp_path, run_tour(section, move_to="meta"))
    assert [p.name for p in paths] == expected


def test_heatmap_rejects_a_matrix_that_does_not_match_the_tokens(tmp_path):
    with pytest.raises(ValueError, match=r"heatmap of shape \(5, 5\) does not match 6 tokens"):
        save_heatmaps(tmp_path / "x.png", "title", [("panel", torch.zeros(5, 5))])
