"""check_output_dir: an output directory is checked before a run, so the run does not fail when it writes."""

import pytest

from attnlab.outputs import check_output_dir


def test_a_new_or_existing_directory_is_accepted_and_nothing_is_created(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("afile", "exists and is not a directory"),
        ("afile/sub", "is not a directory"),  # unwritable for root too, unlike a chmod'ed directory
        ("afile/sub/deeper", "is not a directory"),
    ],
)
def test_a_path_at_or_under_a_file_is_refused(tmp_path, relative, message):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=message):
        check_output_dir(tmp_path / relative)


def test_an_output_file_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(ValueError, match=r"results\.json': it exists and is not a writable file"):
        check_output_dir(tmp_path, ["results.csv", "results.json"])


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_name_is_refused(path):
    with pytest.raises(ValueError, match="empty string"):
        check_output_dir(path)


def test_a_name_too_long_for_the_file_system_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot use output directory"):
        check_output_dir(tmp_path / ("x" * 300) / "sub")
