"""The Disagreement page in a real browser on the real grid's store: the
summary and charts drawn from a link, and the copied share link reopening the
same findings in a fresh context."""

from __future__ import annotations

from urllib.parse import urlencode

from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text
from tests.helpers.browser import new_page, share_link, start_server, stop_server, wait_for_app, wait_for_chart
from tests.helpers.disagreement import BASE, K, S2, page_query


def test_page_in_a_browser_with_its_link(browser, real_grid):
    srv = start_server(real_grid.cache)
    try:
        page = new_page(browser)
        page.goto(srv.url + "Disagreement?" + urlencode(page_query(a="str/logit_diff/denoise/s2", b="str/prob/denoise/s2")))
        wait_for_app(page, timeout=180_000)
        wait_for_chart(page, timeout=120_000)
        grid = disagreement_grid.lookup_grid(BASE, real_grid.store, real_grid.lm.fingerprint, S2)
        first = text.summary(grid, K)[0]
        page.get_by_text(first[:60]).first.wait_for(timeout=60_000)
        # the share link box holds the full view, and opening it in a fresh context shows the same findings
        link = share_link(page, copy=True)  # what the Copy button put on the clipboard
        assert "variants=s2" in link and f"k={K}" in link and "noise-samples=2" in link and "Disagreement" in link
        page2 = new_page(browser)
        page2.goto(link)
        wait_for_app(page2, timeout=180_000)
        page2.get_by_text(first[:60]).first.wait_for(timeout=60_000)
        page2.locator("[data-testid='stVegaLiteChart']").nth(2).wait_for(state="attached", timeout=60_000)  # may come after the summary (some sit in tabs)
        assert page2.locator("[data-testid='stVegaLiteChart']").count() >= 3
        page.context.close()
        page2.context.close()
    finally:
        stop_server(srv)
