import pytest

from attnlab.tour import run_tour


@pytest.fixture(scope="session")
def full_tour():
    """The whole tour's steps, computed once (the buffers lesson on meta, so the same on every machine)."""
    return run_tour(move_to="meta")
