"""run_tour: the chapter's order, one section alone, validation, and the caller's random state."""

import pytest
import torch

from attnlab.tour import SECTIONS, TourConfig, check_plots_dir, find_step, run_tour

# The chapter's order (3.3, 3.4, 3.5.1-2, 3.5.3, 3.6.1, 3.6.2, 3.6.2) and the bonus buffers notebook.
CHAPTER_ORDER = [
    "weight-free",
    "trainable",
    "causal",
    "causal-class",
    "multi-head-wrapper",
    "batched-matmul",
    "multi-head",
    "buffers",
]


def test_sections_run_in_the_chapters_order(full_tour):
    assert list(SECTIONS) == CHAPTER_ORDER
    order = list(dict.fromkeys(step.section for step in full_tour))
    assert order == CHAPTER_ORDER


def test_each_step_key_is_unique_within_its_section(full_tour):
    ids = [(step.section, step.key) for step in full_tour]
    assert len(ids) == len(set(ids))
    assert all(step.explanation and step.code for step in full_tour)


@pytest.mark.parametrize("section", ["trainable", "causal", "multi-head"])
def test_a_section_alone_prints_what_it_prints_in_the_full_tour(full_tour, section):
    alone = run_tour(section, move_to="meta")
    full = [step for step in full_tour if step.section == section]
    assert {step.section for step in alone} == {section}
    assert [step.text for step in alone] == [step.text for step in full]


def test_unknown_section_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown section 'attention'; valid sections: weight-free, trainable"):
        run_tour("attention")


@pytest.mark.parametrize(
    ("move_to", "message"),
    [("cpu", "move_to 'cpu': the buffers lesson needs a device other than cpu"), ("gpu0", "not a torch device")],
)
def test_bad_move_to_is_rejected(move_to, message):
    with pytest.raises(ValueError, match=message):
        TourConfig(move_to=move_to)


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    run_tour("causal", move_to="meta")  # seeds 789 and 123 inside
    assert torch.equal(torch.get_rng_state(), before)


def test_find_step_names_what_is_missing():
    with pytest.raises(KeyError, match="no step 'nope' in section 'causal'"):
        find_step(run_tour("causal", move_to="meta"), "causal", "nope")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_move_to_absent_cuda_is_rejected():
    with pytest.raises(ValueError, match="move_to 'cuda:1': no such device on this machine"):
        TourConfig(move_to="cuda:1")


def test_move_to_a_device_type_torch_knows_but_the_lesson_cannot_use_is_rejected():
    with pytest.raises(ValueError, match="move_to 'xla' is not supported; choose from meta, cuda, mps"):
        TourConfig(move_to="xla")
    assert TourConfig(move_to="meta:0").move_to == "meta:0"


def test_plots_dir_is_checked_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        check_plots_dir(afile / "sub")
    assert check_plots_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checking creates nothing
