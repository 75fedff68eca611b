"""The browser tier's fixtures: one chromium and one Streamlit server (on a
populated store) per run, shared by every browser test. Package scope: both
are closed when the tier is done, so Playwright's event loop never outlives
the browser tests."""

from __future__ import annotations

import os

import pytest

from tests.helpers.browser import CHROMIUM, launch_browser, start_server, stop_server
from tests.helpers.store import link_models, populate_paths, populate_store


@pytest.fixture(scope="package")
def populated_cache(tmp_path_factory):
    """A cache folder with the converted embedded model linked in and the
    synthetic results of ``populate_store`` (Patch) and ``populate_paths``
    (a path sweep and a hypothesis) stored."""
    cache = tmp_path_factory.mktemp("pbcache")
    link_models(cache)
    old = os.environ.get("PATCHBOARD_CACHE_DIR")
    try:
        populate_store(cache)  # also writes the embedded fingerprint sidecar
        populate_paths(cache)
    finally:
        if old is None:
            os.environ.pop("PATCHBOARD_CACHE_DIR", None)
        else:
            os.environ["PATCHBOARD_CACHE_DIR"] = old
    return cache


@pytest.fixture(scope="package")
def server(populated_cache):
    """``streamlit run app.py`` on ``populated_cache``."""
    srv = start_server(populated_cache)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="package")
def browser():
    """Headless chromium; skips with the reason when it or Playwright is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("python playwright is not installed (pip install playwright; never `playwright install`)")
    with sync_playwright() as p:
        b = launch_browser(p)
        try:
            yield b
        finally:
            b.close()
