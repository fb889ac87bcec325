import pytest

from planted import prune_planted


@pytest.fixture(scope="session")
def planted():
    """The planted model pruned once with the default test settings (about 5 s)."""
    return prune_planted()
