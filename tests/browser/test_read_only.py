"""A read-only server driven by a real browser (issue 22): a second Streamlit
server on the tier's populated store with ``PATCHBOARD_READ_ONLY=1``. A
stored link draws; a link to something not stored and the Library offer no
compute, import or delete. The repository's Streamlit settings refuse a
WebSocket whose Host is not this machine's (DNS rebinding)."""

from __future__ import annotations

import base64
import http.client
import os
from urllib.parse import urlencode, urlsplit

import pytest

from patching.core.spec import Spec
from tests.helpers.browser import new_page, start_server, stop_server, wait_for_app, wait_for_heatmap

STORED = Spec(task="ioi", n_pairs=2, seed=0, component="head")
NOT_STORED = Spec(task="ioi", n_pairs=3, seed=5, component="head")


@pytest.fixture(scope="module")
def read_only_server(populated_cache):
    srv = start_server(populated_cache, env={"PATCHBOARD_READ_ONLY": "1"})
    try:
        yield srv
    finally:
        stop_server(srv)


def _upgrade(url: str, host: str) -> int:
    """The status of a WebSocket upgrade to the app's stream with ``host`` as the Host header."""
    u = urlsplit(url)
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        con.request("GET", "/_stcore/stream", headers={
            "Host": host, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Protocol": "streamlit"})
        return con.getresponse().status
    finally:
        con.close()


def test_read_only_server_in_a_browser(read_only_server, browser):
    srv = read_only_server
    page = new_page(browser)
    page.goto(f"{srv.url}?{urlencode(STORED.to_query())}")
    wait_for_heatmap(page)
    wait_for_app(page)
    assert "Read from the store" in page.inner_text("body")
    page.goto(f"{srv.url}?{urlencode(NOT_STORED.to_query())}")
    wait_for_app(page)
    page.get_by_text("Computing a result that is not stored is switched off").wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert "Run patching" not in body and "Traceback" not in body
    assert page.locator("button", has_text="Run patching").count() == 0
    assert page.locator("button", has_text="Show attention pattern").count() == 0
    page.goto(f"{srv.url}Library")
    wait_for_app(page)
    page.get_by_text("This server is read-only").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stFileUploader']").count() == 0
    assert "Open a bundle" not in page.inner_text("body")
    page.context.close()
    # .streamlit/config.toml's allowedHosts: this machine's names only
    assert _upgrade(srv.url, f"127.0.0.1:{urlsplit(srv.url).port}") == 101
    assert _upgrade(srv.url, "attacker.example") != 101
