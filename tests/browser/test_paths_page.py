"""The Paths page (pages/4_Paths.py) in a real browser: a stored sweep and a
hypothesis evaluation (tests/helpers/store.py's populate_paths) drawn from
their links, and their share links reopening the same view."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from patching.core.spec import Spec
from tests.helpers.browser import new_page, share_link, wait_for_app, wait_for_heatmap


def first_metric(page, label: str = "Proportion explained") -> str:
    """The text (label and value) of the st.metric labelled ``label``, once
    drawn (waiting for it by its label: a rerun may still be replacing the
    page's elements when the first metric appears)."""
    wait_for_app(page)
    m = page.locator("[data-testid='stMetric']", has_text=label).first
    m.wait_for(timeout=60_000)
    return m.inner_text()


def test_browser_paths_page_and_its_link(server, browser):
    page = new_page(browser)
    q = Spec(task="ioi", n_pairs=2, seed=0).to_query() | {"mode": "sweep", "receivers": "logits"}
    page.goto(f"{server.url}Paths?{urlencode(q)}")
    wait_for_heatmap(page)
    wait_for_app(page)
    body = page.inner_text("body")
    assert "Read from the store" in body and "Traceback" not in body
    link = share_link(page)
    got = dict(parse_qsl(urlsplit(link).query))
    assert got["receivers"] == "logits" and got["mode"] == "sweep" and urlsplit(link).path.endswith("/Paths")
    # The hypothesis view: proportion explained and the coloured attribution, then its link in a new tab.
    q = Spec(task="induction", n_pairs=2, seed=0).to_query() | {"mode": "hypothesis", "example": "induction", "pair": "1"}
    page.goto(f"{server.url}Paths?{urlencode(q)}")
    assert "Proportion explained" in first_metric(page) and "60.0 %" in first_metric(page)
    page.locator("table[aria-label='per-token attribution']").wait_for(timeout=30_000)
    link = share_link(page)
    other = new_page(browser)
    other.goto(link)
    assert "60.0 %" in first_metric(other) and "Pair 1:" in other.inner_text("body")
    page.context.close()
    other.context.close()
