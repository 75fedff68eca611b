"""Take the README's screenshots of the main pages with Playwright + Debian's
chromium: ``.venv/bin/python docs/screenshots.py [--demo | --cache DIR [--compute]]``.

It starts its own Streamlit server on a free port with PATCHBOARD_CACHE_DIR =
``--cache`` (default: the normal cache, ~/.cache/patchboard), opens the pages
as a new user would and writes PNGs next to this file. The results shown must
be in that store; ``--compute`` computes the missing ones with the real engine
(minutes on a CPU). ``--demo``: a fresh temporary cache holding the shipped
demo bundle only (what a new user sees after ``make run``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from patching.core.spec import Spec  # noqa: E402

HEADS = Spec(task="ioi", n_pairs=8, seed=0, component="head")
#: The Circuits page's default: the IOI curve (the demo's), its knee's circuit drawn from it.
CIRCUITS = Spec(task="ioi", n_pairs=8, seed=0)
#: Factual recall with a sliding window (the demo's; Meng et al.'s w = 5).
WINDOW = Spec(task="facts", n_pairs=8, seed=0, component="mlp_out", window=5)


def ensure_stored(specs, compute: bool) -> None:
    from patching.service import get_model, lookup, run
    from patching.core.config import known_fingerprint
    from patching.store import Store

    store = Store()
    for s in specs:
        spec = s if isinstance(s, Spec) else s.spec
        fp = known_fingerprint(spec.model) or get_model(spec.model).fingerprint
        if lookup(s, store, fp) is None:
            what = spec.label() if isinstance(s, Spec) else f"{s.kind} · {spec.label()}"
            if not compute:
                sys.exit(f"{what} is not stored in {store.path}; run with --compute (or compute it in the app)")
            print(f"computing {what} ...", flush=True)
            run(s, store, lm=get_model(spec.model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="PATCHBOARD_CACHE_DIR for the server (default: the normal cache)")
    ap.add_argument("--compute", action="store_true", help="compute results that are not stored yet")
    ap.add_argument("--demo", action="store_true", help="a fresh temporary cache with the shipped demo imported (the converted model linked in)")
    ap.add_argument("--out", default=str(HERE), help="folder for the PNGs (default: docs/)")
    ap.add_argument("--only", default=None, help="comma list of the shots to take (e.g. circuits.png,circuit_graph.png); default all")
    a = ap.parse_args()
    if a.demo:
        import tempfile

        from tests.helpers.store import link_models

        a.cache = tempfile.mkdtemp(prefix="pb-screenshots-")
        link_models(Path(a.cache))
    if a.cache:
        os.environ["PATCHBOARD_CACHE_DIR"] = a.cache
    from patching.core.config import cache_dir

    cache = cache_dir()
    if a.demo:
        from patching import demo

        print(demo.ensure_imported())
        from patching.core.config import known_fingerprint
        from patching.store import Store

        # The Disagreement grid's statistics, as the rebuilt demo carries them (computed from its sweeps when it does not yet).
        print("grid statistics:", demo.grid_statistics(Store(), known_fingerprint(demo.EMBEDDED)))
    from patching.service import CircuitCurve

    only = set(a.only.split(",")) if a.only else None
    needed = {"patch.png": HEADS, "patch_window.png": WINDOW, "circuits.png": CircuitCurve(CIRCUITS), "circuit_graph.png": CircuitCurve(CIRCUITS)}
    ensure_stored(list({id(v): v for k, v in needed.items() if only is None or k in only}.values()) if only else
                  [HEADS, WINDOW, CircuitCurve(CIRCUITS)], a.compute)

    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import (launch_browser, new_page, start_server, stop_server, wait_for_app, wait_for_chart, wait_for_chart_text,
                                       wait_for_heatmap)

    out = Path(a.out)
    srv = start_server(Path(cache))
    try:
        with sync_playwright() as p:
            b = launch_browser(p)
            q = urlencode(HEADS.to_query())
            shots = [
                ("patch.png", f"?{q}", 1750, True),
                ("patch_window.png", f"?{urlencode(WINDOW.to_query())}", 2250, True),
                # The Disagreement page's first screen as a new user sees it (the answer, no scrolling), its consensus view,
                # and the guided tour's step 4.
                ("disagreement.png", f"Disagreement?{q}", 1000, "Spearman"),
                ("disagreement_consensus.png", f"Disagreement?{q}", 1000, "Spearman", "What stays the same"),
                ("tour.png", "Tour?step=4", 1000, "any"),
                ("paths.png", f"Paths?{q}&mode=sweep", 1500, True),
                ("paths_hypothesis.png", f"Paths?{q}&mode=hypothesis&example=ioi", 1500, False),
                ("circuits.png", f"Circuits?{urlencode(CIRCUITS.to_query())}", 1300, "Faithfulness of the top-n circuits · eap"),
                # The circuit at the knee, below the curve.
                ("circuit_graph.png", f"Circuits?{urlencode(CIRCUITS.to_query())}", 1500, "receiver input", "The top", False),
                ("library.png", "Library", 800, False),
                ("how_to_read.png", f"How_to_read?{urlencode(HEADS.to_query())}", 1500, False),
                ("malformed_link.png", "?n-pairs=abc&metric=logit_diff", 700, True),
            ]
            for name, path, height, chart, *scroll in shots:
                if only is not None and name not in only:
                    continue
                page = new_page(b, 1400, height)
                page.goto(srv.url + path)
                wait_for_app(page)
                if chart == "any":
                    wait_for_chart(page)
                elif chart is True:
                    wait_for_heatmap(page)
                if isinstance(chart, str) and chart != "any":
                    wait_for_chart_text(page, chart)
                try:
                    page.wait_for_load_state("networkidle", timeout=20_000)  # every lazy widget chunk loaded
                except Exception:  # noqa: BLE001 - playwright TimeoutError: an iframe can keep the state from settling; the waits above hold
                    print(f"  {name}: the network did not settle in 20 s; taking the shot anyway")
                page.wait_for_timeout(2500)  # fonts, iframes, transitions
                wait_for_app(page)
                if scroll:
                    exact = scroll[1] if len(scroll) > 1 else True
                    page.get_by_text(scroll[0], exact=exact).first.evaluate("e => e.scrollIntoView({block: 'start'})")
                    page.wait_for_timeout(500)
                page.screenshot(path=str(out / name))
                print("wrote", out / name)
                page.context.close()
            b.close()
    finally:
        stop_server(srv)


if __name__ == "__main__":
    main()
