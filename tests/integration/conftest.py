"""The integration tier's fixtures (the embedded model and the real grid are
in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.helpers.cli import env_for, make_cache


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """A CLI subprocess's environment on a fresh store of this module's own,
    reusing the converted embedded model (conversion takes ~25 s)."""
    return env_for(make_cache(tmp_path_factory.mktemp("cli-cache")))
