"""Real-browser tests: Debian's chromium via Playwright against a Streamlit
server started here on a free localhost port, with a pre-populated store.

Skipped (with the reason) when /usr/bin/chromium is missing; ``make test``
installs it.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.helpers.browser import (chart_texts, combobox_value, new_page, select_option, share_link,
                                   wait_for_app, wait_for_chart_text, wait_for_heatmap)

from patching.core.spec import Spec

STORED = Spec(task="ioi", n_pairs=2, seed=0, component="head")


def query_of(url: str) -> dict:
    return dict(parse_qsl(urlsplit(url).query))


def link(server, spec: Spec, path: str = "") -> str:
    from urllib.parse import urlencode

    return f"{server.url}{path}?{urlencode(spec.to_query())}"


def test_stored_link_draws_heatmap(server, browser):
    page = new_page(browser)
    # warm the server process (imports) once, as a running server would be
    page.goto(server.url)
    wait_for_app(page)
    t0 = time.time()
    page.goto(link(server, STORED))
    wait_for_heatmap(page)
    elapsed = time.time() - t0
    # reported, not asserted: a wall-clock bound fails on a loaded machine (benchmarks/first_paint.py measures it)
    print(f"\nlink of a stored result -> heatmap drawn: {elapsed:.2f} s")
    wait_for_app(page)
    assert "logit diff (normalised)" in chart_texts(page)
    body = page.inner_text("body")
    assert "Read from the store" in body
    assert "Traceback" not in body
    page.context.close()


def test_metric_change_redraws_heatmap(server, browser):
    page = new_page(browser)
    page.goto(link(server, STORED))
    wait_for_heatmap(page)
    before = page.inner_html("[data-testid='stVegaLiteChart'] svg.marks")
    select_option(page, "Metric", "kl · whole prediction")
    page.wait_for_url("**metric=kl**", timeout=30_000)
    wait_for_chart_text(page, "KL effect")
    wait_for_app(page)
    after = page.inner_html("[data-testid='stVegaLiteChart'] svg.marks")
    assert after != before
    assert "logit diff (normalised)" not in chart_texts(page)
    assert query_of(page.url)["metric"] == "kl"
    page.context.close()


def test_copied_link_opens_same_view_in_fresh_context(server, browser):
    a = new_page(browser)
    a.goto(link(server, STORED))
    wait_for_heatmap(a)
    select_option(a, "Metric", "prob · probability")
    a.wait_for_url("**metric=prob**", timeout=30_000)
    wait_for_chart_text(a, "Δ probability")
    wait_for_app(a)
    url = share_link(a, copy=True)
    assert query_of(url) == query_of(a.url) == STORED.with_(metric="prob").to_query()
    view_a = (combobox_value(a, "Metric"), combobox_value(a, "Task"), combobox_value(a, "Component"), chart_texts(a)[:3])

    b = new_page(browser)  # a collaborator: fresh context, no session, no cookies
    b.goto(url)
    wait_for_heatmap(b)
    wait_for_chart_text(b, "Δ probability")
    wait_for_app(b)
    view_b = (combobox_value(b, "Metric"), combobox_value(b, "Task"), combobox_value(b, "Component"), chart_texts(b)[:3])
    assert view_b == view_a
    assert query_of(b.url) == query_of(url)
    a.context.close()
    b.context.close()


@pytest.mark.parametrize("query, field", [("n-pairs=abc", "n-pairs"), ("component=bogus&metric=logit_diff", "component")])
def test_malformed_link_shows_message(server, browser, query, field):
    page = new_page(browser)
    page.goto(f"{server.url}?{query}")
    wait_for_app(page)
    alert = page.locator("[data-testid='stAlertContainer']", has_text="This link has a problem")
    alert.wait_for(timeout=30_000)
    assert field in alert.inner_text()
    body = page.inner_text("body")
    assert "Traceback" not in body and "Error:" not in body.split("This link has a problem")[0]
    assert combobox_value(page, "Metric") == "logit_diff · preference"  # the defaults
    assert query_of(page.url) == Spec().validated().to_query()
    page.context.close()


def test_library_opens_a_stored_result(server, browser):
    page = new_page(browser)
    page.goto(server.url + "Library")
    wait_for_app(page)
    page.get_by_text("Recently stored").wait_for(timeout=30_000)
    page.locator("[data-testid='stPageLink']", has_text="mlp_out").first.click()
    page.wait_for_url("**component=mlp_out**", timeout=30_000)
    wait_for_heatmap(page)
    page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stVegaLiteChart']\").length >= 2", timeout=30_000)
    assert "summation baseline" in " ".join(chart_texts(page)) or "sum of single layers" in " ".join(chart_texts(page))
    page.context.close()


def test_how_to_read_page(server, browser):
    page = new_page(browser)
    page.goto(link(server, STORED, "How_to_read"))
    wait_for_app(page)
    page.get_by_text("In the current example").wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "sufficient" in body and "necessary" in body
    assert "Traceback" not in body
    page.context.close()


def test_upload_pairs_file(server, browser, tmp_path):
    """A CSV upload fills the pairs box; the pairs travel in the link (never as a
    server path) and the tokens are shown aligned."""
    f = tmp_path / "my_pairs.csv"
    f.write_text('clean,corrupt,answer,counter_answer\n'
                 '"The capital city of France is","The capital city of Italy is", Paris, Rome\n', encoding="utf-8")
    page = new_page(browser)
    page.goto(server.url)
    wait_for_app(page)
    page.get_by_text("My own pairs").click()
    page.locator("[data-testid='stFileUploader'] input[type='file']").wait_for(state="attached", timeout=30_000)
    page.wait_for_url("**pairs=**", timeout=30_000)  # the example pair
    example_url = page.url
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(f))
    page.locator("table.pb-tok", has_text="France").wait_for(timeout=60_000)
    page.wait_for_function("(u) => window.location.href !== u", arg=example_url, timeout=30_000)
    wait_for_app(page)
    q = query_of(page.url)
    spec = Spec.from_query(q)
    assert spec.pairs[0].clean == "The capital city of France is" and spec.pairs[0].answer == " Paris"
    assert "my_pairs" not in page.url and "/tmp" not in page.url
    assert "capital city of France" in page.locator("[data-testid='stTextArea'] textarea").input_value()
    tokens = page.locator("table.pb-tok").inner_text()
    assert "France" in tokens and "Italy" in tokens
    page.context.close()


def test_downloads(server, browser):
    page = new_page(browser)
    page.goto(link(server, STORED))
    wait_for_heatmap(page)
    wait_for_app(page)
    for label, head in (("CSV", b"component,layer,head,pos,value"), ("PNG", b"\x89PNG"), ("SVG", b"<svg"), ("JSON", b"{")):
        with page.expect_download(timeout=60_000) as d:
            page.locator("[data-testid='stDownloadButton'] button:visible", has_text=label).first.click()  # visible: 'pairs.csv' hides in an expander
        data = open(d.value.path(), "rb").read()
        assert data.lstrip()[:len(head)] == head or head in data[:300], (label, data[:80])
    page.context.close()


def test_hostile_links_render_plain_and_fetch_nothing(server, browser):
    """Markdown beacons and phishing links from a link show as plain text (no
    <a>, no <img> to another host, no request leaves the machine); a layer
    range to 10^9 and a 5,000-digit value are refused with the project's
    message; the server stays up."""
    from urllib.parse import urlencode

    from patching.core.codec import encode_text

    hostile = [
        ("", {"seed": "![t](http://127.0.0.2:9/beacon.png)", "task": "[Session expired, log in again](http://127.0.0.2:9/phish)"}),
        ("Paths", {"mode": "sweep", "task": "ioi", "receivers": "0-999999999.0:q", "k": "9" * 5000}),
        ("Paths", {"mode": "hypothesis", "task": "ioi", "hypothesis": encode_text(
            '{"name": "![b](http://127.0.0.2:9/b.png)", "description": "[phish](http://127.0.0.2:9/p) <img src=http://127.0.0.2:9/i.png>", "paths": []}')}),
    ]
    for path, q in hostile:
        page = new_page(browser)
        outside = []
        page.on("request", lambda r: outside.append(r.url) if urlsplit(r.url).hostname not in ("127.0.0.1", None) else None)
        page.goto(f"{server.url}{path}?{urlencode(q)}")
        wait_for_app(page)
        page.wait_for_timeout(500)
        main = page.locator("[data-testid='stMain']")
        assert page.locator("[data-testid='stException']").count() == 0
        bad = main.locator("a[href*='127.0.0.2'], img[src*='127.0.0.2']")
        assert bad.count() == 0, (path, [bad.nth(i).evaluate("e => e.parentElement.outerHTML") for i in range(bad.count())])
        assert not outside, outside
        text = page.inner_text("body").replace("\u2060", "")  # the invisible word joiner that breaks autolinks
        assert "Traceback" not in text
        if "seed" in q:
            assert "![t](http://127.0.0.2:9/beacon.png)" in text  # shown literally, as typed
        if "receivers" in q:
            assert "layer 999999999 does not exist" in text
        page.context.close()
    assert server.proc.poll() is None
