"""The Disagreement page and the guided tour in Chromium, on a fresh store
holding the shipped demo (as a new user has it after ``make run``): the
first screen at 1400×1000 holds the factor chart and the answer's sentences
without scrolling, and they are the library's; a click on the consensus
matrix opens that component's effects; the tour's six steps, each a link
reached by its Next link, show the numbers of the store (recomputed here
from the stored rows: the baselines, the 2-SD rule with numpy, Spearman with
scipy)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from patching.core.spec import Spec
from patching.store import Store
from patching.studies.disagreement import answer, stored
from patching.studies.disagreement import grid as disagreement_grid
from tests.helpers import env_restored
from tests.helpers.browser import combobox_value, new_page, start_server, stop_server, wait_for_app, wait_for_chart
from tests.helpers.store import link_models

SPEC = Spec().validated()  # the demo's example: IOI, 8 pairs, heads, str, denoise


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A server on a fresh cache with the shipped demo imported, and the
    demo grid's statistics (stored by the demo once it carries them, else
    computed here once, as the page would on its first open)."""
    from patching import demo as shipped
    from patching.core.config import known_fingerprint

    cache = tmp_path_factory.mktemp("demo-store")
    link_models(cache)
    with env_restored("PATCHBOARD_CACHE_DIR"):
        os.environ["PATCHBOARD_CACHE_DIR"] = str(cache)
        store = Store(cache / "results.sqlite")
        msg = shipped.ensure_imported(store)
        fp = known_fingerprint(SPEC.model)
        assert shipped.grid_statistics(store, fp), msg
    srv = start_server(cache)
    try:
        yield srv, store, fp
    finally:
        stop_server(srv)


def _in_view(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"]


def test_first_screen_answers_without_scrolling_and_a_click_opens_a_component(demo, browser):
    srv, store, fp = demo
    base = disagreement_grid.grid_base(SPEC)
    stats, key, new = stored.load_or_compute(store, base, disagreement_grid.default_settings(base), fp, 10)
    assert not new
    page = new_page(browser, 1400, 1000)
    page.goto(srv.url + "Disagreement?" + urlencode(SPEC.to_query()))
    wait_for_app(page, timeout=180_000)
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    wait_for_chart(page)
    assert "Spearman" in chart.inner_text() or chart.locator("text", has_text="Spearman").count()
    assert _in_view(page, chart)
    lines = answer.sentences(stats)
    for line in lines:  # each sentence, as the library writes it, whole on the first screen
        item = page.locator("li", has_text=answer.plain(line)[:80]).first
        assert answer.plain(line) in re.sub(r"\s+", " ", item.inner_text()), line[:80]
        assert _in_view(page, item), line[:60]
    assert page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollTop") == 0
    # a click on the consensus matrix's second row opens that component's effects
    comps = answer.consensus.components(stats.cells)
    second = comps["component"].iloc[1]
    matrix = page.locator("[data-testid='stVegaLiteChart']").nth(1)
    matrix.scroll_into_view_if_needed()
    matrix.locator("g.mark-rect path").nth(len(stats.settings)).click()  # row 2, first setting
    page.wait_for_url(f"**focus={second}**", timeout=60_000, wait_until="commit")
    wait_for_app(page)
    assert combobox_value(page, "Effects of one component under every setting") == second
    page.context.close()


def _metrics(page) -> dict[str, str]:
    page.locator("[data-testid='stMetric']").first.wait_for(timeout=60_000)
    out = {}
    for m in page.locator("[data-testid='stMetric']").all():
        label = m.locator("[data-testid='stMetricLabel']").inner_text().strip()
        out[label] = m.locator("[data-testid='stMetricValue']").inner_text().strip()
    return out


def test_the_tour_walks_six_linked_steps_with_the_stores_numbers(demo, browser):
    srv, store, fp = demo
    rec = store.get(SPEC.cache_key(fp))
    b, t = rec["baselines"], rec["table"]
    labels = [f"L{int(l)}H{int(h)}" for l, h in zip(t["layer"], t["head"])]
    ld = t["logit_diff"].to_numpy(dtype=float)
    z = (ld - ld.mean()) / ld.std()
    top = int(np.argmax(np.abs(ld)))
    base = disagreement_grid.grid_base(SPEC)
    settings = disagreement_grid.default_settings(base)
    stats, _, _ = stored.load_or_compute(store, base, settings, fp, 10)

    def table_of(corruption: str, direction: str, variant: str) -> pd.DataFrame:
        return store.get(SPEC.with_(corruption=corruption, direction=direction, ioi_corrupt=variant).cache_key(fp))["table"]

    page = new_page(browser, 1400, 1000)
    page.goto(srv.url + "Tour?step=1")
    wait_for_app(page, timeout=180_000)
    for n in range(1, 7):
        if n > 1:
            page.get_by_role("link", name=f"Step {n} →").click()
            page.wait_for_url(f"**step={n}", timeout=60_000, wait_until="commit")
            wait_for_app(page, timeout=120_000)
        page.get_by_text(f"Step {n} of 6").wait_for(timeout=60_000)
        m = _metrics(page)
        if n == 1:
            assert m["P(right name), clean"] == answer.fmt(b["clean_prob"], 3) and m["P(right name), corrupted"] == answer.fmt(b["corrupt_prob"], 4)
            assert m["logit difference, corrupted"] == answer.fmt(b["corrupt_logit_diff"]) and m["prompt pairs"] == str(SPEC.n_pairs)
        elif n == 2:
            assert m["head"] == labels[top] and m["share of the gap restored"] == answer.pct(ld[top])
        elif n == 3:
            assert m["heads patched"] == str(len(ld)) and m["detected (2-SD rule)"] == str(int((np.abs(z) > 2).sum()))
            page.locator("[data-testid='stVegaLiteChart'] svg.marks g.mark-rect path").first.wait_for(timeout=60_000)
        elif n == 4:
            factor = answer.layout.FACTORS[stats.factors.iloc[0]["factor"]]
            assert m["factor that matters most"] == factor
            if factor == "direction":  # the demo's: str/logit_diff/denoise/s2 against its noising twin, by scipy on the stored tables
                other = table_of("str", "noise", "s2")["logit_diff"].to_numpy(dtype=float)
                assert m["ρ, denoising vs noising"] == answer.fmt(sps.spearmanr(ld, other).statistic)
                ta, tb = set(np.argsort(-np.abs(ld))[:10]), set(np.argsort(-np.abs(other))[:10])
                assert m["top-10 overlap"] == answer.pct(len(ta & tb) / len(ta | tb))
        elif n == 5:
            detected = {}  # the 2-SD rule on every stored sweep and metric: how many settings detect each head
            for s in settings:
                c, metric, d, v = s.split("/")
                x = table_of(c, d, v)[metric].to_numpy(dtype=float)
                hit = np.abs(x - x.mean()) > 2 * x.std()
                for lab in np.array(labels)[hit]:
                    detected[lab] = detected.get(lab, 0) + 1
            core = [lab for lab, k in detected.items() if k >= 0.9 * len(settings)]
            assert m["settings"] == str(len(settings)) and m["stable core"] == str(len(core))
            assert m["fringe"] == str(len(detected) - len(core))
        elif n == 6:
            assert m["prompt pairs"] == str(SPEC.n_pairs)
    assert page.get_by_role("link", name="Step 7 →").count() == 0
    page.context.close()
