"""Load: concurrent browser sessions opening stored links on one server.

Starts one Streamlit server (``app.py``) on a temporary ``PATCHBOARD_CACHE_DIR``
whose store holds well-formed results for the embedded model (the tests'
``populate_store``: real prompts, real shape and key, synthetic numbers), then
in one headless Chromium, each session in its own browser context (no shared
cookies or Streamlit session):

* **peer**: one session alone opens each stored link in turn (``--rounds``
  times), timing goto -> first chart drawn;
* **load**: ``--sessions`` (default 10) sessions open stored links at once,
  ``--rounds`` times; the same timing;
* **hostile** (unless ``--no-hostile``): the same number of sessions open
  hostile links at once (a layer range to 10^9, 5,000-digit numbers, 600
  pairs, deeply nested hypothesis JSON, markdown beacons); each page must show
  the project's message, no exception box, and fetch nothing from elsewhere.

It prints p50 / p95 / max time to chart for peer and load, their ratio (load
p95 / peer p95: measured in the same run, so comparable on a shared machine),
failures, and the server's peak RSS (``VmHWM`` of the server process). Goal
(issue 14): no failure, load p95 <= 3 s, peak RSS <= 3 GB. Usage::

    .venv/bin/python benchmarks/load_links.py [--sessions 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
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

CHART = "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg.marks"


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of the process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hostile_links(base: str) -> list[str]:
    from patching.core.codec import encode_json, encode_text

    row = {"clean": "a", "corrupt": "b", "answer": " c", "counter_answer": " d"}
    qs = [
        ("Paths", {"mode": "sweep", "receivers": "0-999999999.0:q", "senders": "0-" + "9" * 5000 + ".*", "task": "ioi"}),
        ("", {"seed": "![t](http://127.0.0.2:9/beacon.png)", "task": "[Session expired](http://127.0.0.2:9/phish)"}),
        ("", {"pairs": encode_json([row] * 600)}),
        ("Paths", {"mode": "hypothesis", "task": "ioi", "hypothesis": encode_text('{"paths": ' + "[" * 5000 + "]" * 5000 + "}")}),
        ("", {"key-positions": "Infinity", "pairs": encode_json([row]), "corruption": "gn"}),
        ("Disagreement", {"k": "9" * 5000, "top": "1e309", "task": "ioi"}),
        ("How_to_read", {"n-pairs": "9" * 5000}),
        ("Paths", {"mode": "hypothesis", "task": "ioi", "hypothesis": encode_text(
            '{"name": "![b](http://127.0.0.2:9/b.png)", "description": "<img src=http://127.0.0.2:9/i.png>", "paths": []}')}),
    ]
    return [f"{base}{page}?{urlencode(q)}" for page, q in qs]


async def open_link(browser, url: str, wait_chart: bool, outside: list) -> tuple[float, str | None]:
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")) else None)
    t0 = time.perf_counter()
    err = None
    try:
        await page.goto(url, timeout=60_000)
        await page.wait_for_selector("[data-testid='stMain']", timeout=60_000)
        if wait_chart:
            await page.wait_for_selector(CHART, timeout=60_000)
        else:
            await page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
        dt = time.perf_counter() - t0
        if await page.locator("[data-testid='stException']").count():
            err = "exception box"
    except Exception as e:  # noqa: BLE001 - a failure is reported, not raised
        dt, err = time.perf_counter() - t0, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    await ctx.close()
    return dt, err


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def main_async(a) -> int:
    from playwright.async_api import async_playwright


    cache = Path(tempfile.mkdtemp(prefix="pb-load-"))
    link_models(cache)
    specs = populate_store(cache)
    server = start_server(cache)
    links = [f"{server.url}?{urlencode(s.to_query())}" for s in specs]
    outside: list[str] = []
    failures: list[str] = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            await open_link(browser, links[0], True, outside)  # warm-up: imports, first script run (not timed)
            peer: list[float] = []
            for _ in range(a.rounds):
                for url in links:
                    dt, err = await open_link(browser, url, True, outside)
                    peer.append(dt)
                    if err:
                        failures.append(f"peer {url[-40:]}: {err}")
            load: list[float] = []
            for _ in range(a.rounds):
                urls = [links[i % len(links)] for i in range(a.sessions)]
                for dt, err in await asyncio.gather(*(open_link(browser, u, True, outside) for u in urls)):
                    load.append(dt)
                    if err:
                        failures.append(f"load: {err}")
            hostile: list[float] = []
            if not a.no_hostile:
                hl = hostile_links(server.url)
                urls = [hl[i % len(hl)] for i in range(max(a.sessions, len(hl)))]
                for u, (dt, err) in zip(urls, await asyncio.gather(*(open_link(browser, u, False, outside) for u in urls))):
                    hostile.append(dt)
                    if err:
                        failures.append(f"hostile {u[:80]}: {err}")
            await browser.close()
        alive = server.proc.poll() is None
        rss = peak_rss_mb(server.proc.pid) if alive else float("nan")
    finally:
        stop_server(server)
    print(f"stored links: {len(links)} ({', '.join(s.component for s in specs)}), sessions {a.sessions}, rounds {a.rounds}")
    print(f"peer (1 session alone): p50 {statistics.median(peer):.2f} s  p95 {pct(peer, .95):.2f} s  max {max(peer):.2f} s  (n={len(peer)})")
    print(f"load ({a.sessions} at once):   p50 {statistics.median(load):.2f} s  p95 {pct(load, .95):.2f} s  max {max(load):.2f} s  (n={len(load)})")
    print(f"ratio load/peer p95: {pct(load, .95) / pct(peer, .95):.2f}x")
    if hostile:
        print(f"hostile ({len(hostile)} at once): p95 {pct(hostile, .95):.2f} s to a settled page")
    print(f"server alive afterwards: {alive}; peak RSS {rss:.0f} MB")
    print(f"requests to other hosts: {len(outside)}" + (f" e.g. {outside[0][:80]}" if outside else ""))
    print(f"failures: {len(failures)}")
    for f in failures[:10]:
        print(f"  {f}")
    ok = not failures and alive and not outside and pct(load, .95) <= 3.0 and rss <= 3072
    print("goal (no failure, p95 <= 3 s, RSS <= 3 GB, nothing fetched from elsewhere):", "met" if ok else "NOT met")
    return 0 if not failures and alive and not outside else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-hostile", action="store_true")
    a = ap.parse_args()
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
