"""First paint: a stored link opened in a fresh browser context, until its
first chart is drawn, and where the time goes.

Starts one Streamlit server (``app.py``) on a temporary
``PATCHBOARD_CACHE_DIR`` (the converted embedded model linked in, the shipped
demo bundle imported: the real results behind every page's default link),
with ``PATCHBOARD_TIMING`` set so the pages log timestamps of their script run
(:mod:`ui.timing`). One headless Chromium; each view in a new browser context
(no cache, cookies or Streamlit session: a collaborator opening a link).

For each link it prints, over ``--runs`` opens (after one untimed warm-up
open, which is reported separately as *cold*: the server's first run of the
page imports its modules):

* **first chart**: navigation start -> the first Vega chart's marks in the
  DOM (its rect paths) (the browser's clock, ``performance.now()``, from a
  MutationObserver installed before any page script runs);
* browser phases: HTML received (``responseEnd``), ``DOMContentLoaded``,
  ``load`` (Streamlit's JS bundle parsed and run), the app shell (``stMain``)
  in the DOM;
* server phases (the page's marks, relative to its script run's start):
  imports done, store read (lookup), first chart sent, script end; and the
  script's start relative to navigation start (websocket and session setup).

* **whole page**: navigation start -> the script run finished and every
  chart on the page drawn.

``--fresh N`` measures instead what a first visitor meets: N times, a new
server is started (nothing of the page imported or cached in memory; the
store as the demo left it, so the Disagreement grid's statistics are read
from the store when the demo carries them, else computed once on the first
start and stored) and each link is opened once, first alone, then by two
browser contexts at the same moment (a second concurrent session), on
servers started afresh for each. The Patch page's link is the peer measured
in the same run: the report gives each link's times and their ratio to it.

Usage::

    .venv/bin/python benchmarks/first_paint.py [--runs 7] [--links patch,disagreement,paths,tour]
    .venv/bin/python benchmarks/first_paint.py --fresh 3 [--links patch,disagreement,tour]

Report min and median; the machine's load average is printed before and
after (the machines are shared: rerun when it is far above 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server  # noqa: E402
from tests.helpers.store import link_models, populate_store  # noqa: E402

#: A chart with its marks drawn (not an empty frame): Vega's SVG rects (every
#: page's first chart is a heatmap or a matrix) or a canvas.
CHART = "[data-testid='stVegaLiteChart'] svg.marks g.mark-rect path, [data-testid='stVegaLiteChart'] canvas"

# Records, on the browser's clock, when the app shell and the first chart
# appear, and when the whole page is done (the script run finished, every
# chart drawn).
OBSERVER = """
(() => {
  window.__pb = {};
  const sel = %s;
  const check = () => {
    if (!window.__pb.main && document.querySelector("[data-testid='stMain']")) window.__pb.main = performance.now();
    if (!window.__pb.chart && document.querySelector(sel)) window.__pb.chart = performance.now();
    if (window.__pb.chart && !window.__pb.done && document.querySelector("[data-testid='stApp'][data-test-script-state='notRunning']")) {
      const charts = [...document.querySelectorAll("[data-testid='stVegaLiteChart']")];
      if (charts.every(c => c.querySelector("svg.marks g, canvas"))) { window.__pb.done = performance.now(); obs.disconnect(); }
    }
  };
  const obs = new MutationObserver(check);
  document.addEventListener('DOMContentLoaded', () => {
    obs.observe(document.documentElement, {childList: true, subtree: true, attributes: true, attributeFilter: ['data-test-script-state']}); check(); });
})();
""" % json.dumps(CHART)


def links() -> dict[str, str]:
    from patching.core.spec import Spec

    q = urlencode(Spec().validated().to_query())
    return {"patch": f"?{q}", "disagreement": f"Disagreement?{q}", "paths": f"Paths?{q}&mode=sweep", "tour": "Tour?step=3"}


def _grid_stats_stored(cache: Path) -> bool:
    from patching.store import Store

    return bool(len(Store(cache / "results.sqlite").list(kind="grid_stats")))


def prepare_cache(cache: Path) -> str:
    link_models(cache)
    os.environ["PATCHBOARD_CACHE_DIR"] = str(cache)
    from patching import demo

    if demo.DEMO_PATH.exists():
        said = demo.ensure_imported()
        if not _grid_stats_stored(cache):  # as a rebuilt demo carries them (python -m patching demo build stores them)
            from patching.core.config import known_fingerprint
            from patching.store import Store

            t = time.time()
            demo.grid_statistics(Store(cache / "results.sqlite"), known_fingerprint(demo.EMBEDDED))
            said += f"\nthe demo bundle lacks the grid's statistics: computed and stored first, as a rebuilt demo carries them ({time.time() - t:.1f} s)"
        return said
    populate_store(cache)
    return "demo bundle missing: synthetic results for the Patch page only"


def server_marks(path: Path, t0: float, t1: float) -> dict[str, float]:
    """Offsets (s) of the marks of the script run(s) started in [t0, t1],
    relative to the first run's start; plus that start relative to t0."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if t0 <= r["t"] <= t1 + 0.5]
    if not rows:
        return {}
    first = next((r for r in rows if r["mark"].startswith("start:app")), rows[0])
    out = {"script start (after goto)": first["t"] - t0}
    for r in rows:
        if r["run"] == first["run"] and not r["mark"].startswith("start:app"):
            out.setdefault(r["mark"], r["t"] - first["t"])
    return out


def open_once(browser, url: str, timing: Path) -> dict[str, float]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_init_script(OBSERVER)
    page = ctx.new_page()
    t0 = time.time()
    page.goto(url)
    try:
        page.wait_for_selector(CHART, timeout=60_000, state="attached")
    except Exception:  # noqa: BLE001 - playwright TimeoutError: report it, keep measuring
        shot = Path(tempfile.gettempdir()) / f"first_paint_failed_{int(t0)}.png"
        page.screenshot(path=str(shot), full_page=True)
        ctx.close()
        print(f"  no chart after 60 s (screenshot {shot})")
        return {"failed": 1.0}
    t1 = time.time()
    b = browser_times(page)
    ctx.close()
    out = {"first chart": b["chart"] / 1000, "whole page": b["done"] / 1000, "HTML received": b["html"] / 1000,
           "DOMContentLoaded": b["dcl"] / 1000, "load (JS run)": b["load"] / 1000, "app shell (stMain)": (b["main"] or float("nan")) / 1000,
           "wall (goto -> chart, python side)": t1 - t0}
    out.update({f"server: {k}": v for k, v in server_marks(timing, t0, t1).items()})
    return out


def browser_times(page, timeout: float = 120_000) -> dict[str, float]:
    """The observer's times (ms from navigation start) once the page is done."""
    page.wait_for_function("() => window.__pb && window.__pb.chart && window.__pb.done", timeout=timeout)
    return page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        return {html: n.responseEnd, dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, main: window.__pb.main,
                chart: window.__pb.chart, done: window.__pb.done}; }""")


def fresh_opens(browser, url: str, sessions: int) -> list[dict[str, float]]:
    """``sessions`` fresh browser contexts opening ``url`` at the same moment
    (navigations started back to back); each one's first chart and whole page."""
    ctxs = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(sessions)]
    pages = []
    for ctx in ctxs:
        ctx.add_init_script(OBSERVER)
        pages.append(ctx.new_page())
    for p in pages:
        p.goto(url, wait_until="commit")
    out = []
    for p in pages:
        b = browser_times(p)
        out.append({"first chart": b["chart"] / 1000, "whole page": b["done"] / 1000})
    for ctx in ctxs:
        ctx.close()
    return out


def fresh(browser, cache: Path, names: list[str], repeats: int) -> None:
    """The ``--fresh`` report (see the module doc)."""
    rows: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats):
        for name in names:
            for sessions in (1, 2):
                srv = start_server(cache)
                try:
                    got = fresh_opens(browser, srv.url + links()[name], sessions)
                finally:
                    stop_server(srv)
                for i, g in enumerate(got):
                    who = "alone" if sessions == 1 else f"2 at once, session {i + 1}"
                    for k, v in g.items():
                        rows.setdefault((f"{name}: {k}", who), []).append(v)
        print(f"  repeat {r + 1}/{repeats} done, load average {os.getloadavg()}", flush=True)
    print(f"\n{'fresh server, first visit (s)':<34} {'sessions':<24} {'min':>7} {'median':>7} {'max':>7} {'median / patch':>15}")
    for (what, who), vals in rows.items():
        peer = rows.get((f"patch: {what.split(': ', 1)[1]}", who))
        ratio = statistics.median(vals) / statistics.median(peer) if peer else float("nan")
        print(f"{what:<34} {who:<24} {min(vals):7.2f} {statistics.median(vals):7.2f} {max(vals):7.2f} {ratio:15.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--links", default="patch,disagreement,paths", help="comma list of: " + ", ".join(links()))
    ap.add_argument("--fresh", type=int, default=0, metavar="N", help="N fresh server starts per link instead (first visit, alone and two at once)")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"load average before: {os.getloadavg()}")
    if a.fresh:
        names = [n.strip() for n in a.links.split(",")]
        names = ["patch"] + [n for n in names if n != "patch"]  # the peer first
        with tempfile.TemporaryDirectory(prefix="pb-first-paint-") as tmp:
            cache = Path(tmp)
            print(prepare_cache(cache))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                fresh(browser, cache, names, a.fresh)
                browser.close()
        print(f"\nload average after: {os.getloadavg()}")
        return
    with tempfile.TemporaryDirectory(prefix="pb-first-paint-") as tmp:
        cache = Path(tmp)
        print(prepare_cache(cache))
        timing = cache / "timing.jsonl"
        srv = start_server(cache, env={"PATCHBOARD_TIMING": str(timing)})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                for name in a.links.split(","):
                    url = srv.url + links()[name.strip()]
                    cold = open_once(browser, url, timing)
                    runs = [open_once(browser, url, timing) for _ in range(a.runs)]
                    failed = sum("failed" in r for r in runs)
                    runs = [r for r in runs if "failed" not in r]
                    print(f"\n== {name}: {url[len(srv.url):][:90]}..." + (f" ({failed} of {a.runs} opens drew no chart)" if failed else ""))
                    print(f"{'phase (s, from navigation start unless noted)':<52} {'cold':>7} {'min':>7} {'median':>7}")
                    keys = list(dict.fromkeys(k for r in [cold] + runs for k in r))
                    for k in keys:
                        vals = [r[k] for r in runs if k in r and r[k] == r[k]]
                        c = cold.get(k, float("nan"))
                        if vals:
                            print(f"{k:<52} {c:7.3f} {min(vals):7.3f} {statistics.median(vals):7.3f}")
                browser.close()
        finally:
            stop_server(srv)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
