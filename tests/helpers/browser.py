"""Real-browser helpers for Patchboard's page tests (and docs/screenshots.py,
benchmarks/): Debian's chromium driven by Python Playwright (never
``playwright install``), and a Streamlit server started on a free localhost
port with its own result store.

The pytest fixtures (``browser``, ``server``, ``populated_cache``) live in
``tests/browser/conftest.py``; a browser test only names them::

    def test_my_page(server, browser):
        page = new_page(browser)
        page.goto(server.url + "Disagreement?model=smollm2-135m&task=ioi")
        wait_for_app(page)
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    cache: Path
    log: Path


def start_server(cache: Path, port: int | None = None, timeout: float = 300, env: dict | None = None) -> Server:
    """``streamlit run app.py`` on ``port`` (a free one by default) with
    PATCHBOARD_CACHE_DIR=cache; waits for the health endpoint. ``timeout`` is
    only an upper bound (a loaded machine starts slowly). A free port taken by
    another process before Streamlit binds it is retried on another one."""
    for _ in range(3):
        srv = _start(cache, port or free_port(), timeout, env)
        if srv is not None:
            return srv
        if port is not None:
            break
    raise RuntimeError(f"streamlit could not bind a port:\n{(cache / 'server.log').read_text()[-3000:]}")


def _start(cache: Path, port: int, timeout: float, env: dict | None) -> Server | None:
    """One start; None when the port turned out to be taken."""
    log = cache / f"server-{port}.log"
    e = dict(os.environ, PATCHBOARD_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    e.update(env or {})
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
           "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            text = log.read_text()
            (cache / "server.log").write_text(text)
            if f"Port {port} is already in use" in text or "Address already in use" in text:
                return None
            raise RuntimeError(f"streamlit exited early:\n{text[-3000:]}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return Server(url, proc, cache, log)
        except OSError:
            time.sleep(0.3)
    stop_server(Server(url, proc, cache, log))
    raise RuntimeError(f"streamlit did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    """Stop the server we started (its own process group only)."""
    if server.proc.poll() is None:
        try:
            os.killpg(server.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)


# ---------------------------------------------------------------- browser


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def new_page(browser, width: int = 1400, height: int = 1000):
    """A page in a fresh context (no cookies, no session): like a collaborator
    opening a link."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    return ctx.new_page()


def wait_for_app(page, timeout: float = 60_000) -> None:
    """Until the script run finished (no running indicator) and the main
    block rendered."""
    page.wait_for_selector("[data-testid='stMain']", timeout=timeout)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def wait_for_chart(page, timeout: float = 60_000):
    """The first Vega chart drawn (its canvas or svg present); returns it."""
    return page.wait_for_selector("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg.marks",
                                  timeout=timeout)


# ---------------------------------------------------------------- page helpers

CHART_DRAWN = "[data-testid='stVegaLiteChart'] svg.marks g.mark-rect path"


def wait_for_heatmap(page, timeout: float = 60_000):
    """Until a heatmap's cells are drawn (Vega's SVG rect marks)."""
    return page.wait_for_selector(CHART_DRAWN, timeout=timeout)


def chart_texts(page) -> list[str]:
    """Every text of the drawn Vega charts (titles, legend titles, labels)."""
    return page.evaluate(
        "() => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] svg.marks text\")].map(t => t.textContent)")


def wait_for_chart_text(page, text: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "(t) => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] svg.marks text\")].some(e => e.textContent.includes(t))",
        arg=text, timeout=timeout)


def select_option(page, label: str, option: str) -> None:
    """Pick ``option`` (its visible text) in the selectbox labelled ``label``."""
    box = page.get_by_role("combobox", name=label)
    opt = page.locator("[role='option']").filter(has_text=option).first
    # A click can land before the widget is interactive, or while a rerun
    # replaces it (a loaded machine): open the list again until the option
    # shows and takes the click.
    for _ in range(8):
        box.click()
        try:
            opt.wait_for(timeout=10_000)
            opt.click(timeout=10_000)
            return
        except Exception:  # noqa: BLE001 - playwright TimeoutError
            page.keyboard.press("Escape")
    raise AssertionError(f"the option {option!r} of {label!r} never showed")


def combobox_value(page, label: str) -> str:
    return page.get_by_role("combobox", name=label).input_value()


def share_link(page, copy: bool = True) -> str:
    """The URL in the page's copy-link box (the first such box); with
    ``copy`` also press its Copy button and return what the clipboard got."""
    box = page.frame_locator("[data-testid='stIFrame']").first
    url = box.locator("#pb-text").input_value()
    if copy:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        box.locator("#pb-copy").click()
        box.locator("#pb-copy", has_text="Copied").wait_for(timeout=5000)
        url = page.evaluate("navigator.clipboard.readText()")
    return url
