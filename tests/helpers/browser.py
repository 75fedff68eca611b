"""Real-browser helpers for Patchboard's page tests (and docs/screenshots.py).

Debian's chromium driven by Python Playwright (never ``playwright install``),
and a Streamlit server started on a free localhost port with its own result
store. Reuse from any page test::

    from tests.browser_util import (browser, populated_cache, server, new_page,
                                    wait_for_app, wait_for_chart)   # pytest fixtures + helpers

    def test_my_page(server, browser):
        page = new_page(browser)
        page.goto(server.url + "Disagreement?model=smollm2-135m&task=ioi")
        wait_for_app(page)
        ...

Fixtures (module-scoped, import them into the test module):

* ``populated_cache`` — a temporary PATCHBOARD_CACHE_DIR whose ``models``
  links the converted embedded model of the default cache (so nothing is
  converted again) and whose store holds the :data:`STORED_SPECS`, written
  by :func:`populate_store`.
* ``server`` — ``streamlit run app.py`` on a free port with that cache;
  ``server.url`` ends with ``/``.
* ``browser`` — headless chromium; skips the test with a reason when
  /usr/bin/chromium (or Playwright) is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


# ---------------------------------------------------------------- store


def _spec_list():
    from patching.core.spec import Spec

    return [
        Spec(task="ioi", n_pairs=2, seed=0, component="head"),
        Spec(task="ioi", n_pairs=2, seed=0, component="resid_pre"),
        Spec(task="ioi", n_pairs=2, seed=0, component="mlp_out", window=3),
    ]


def default_models_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "patchboard" / "models"


def link_models(cache: Path) -> None:
    """``cache/models`` -> the default cache's converted models (conversion
    takes ~25 s; reuse it). Converts once into the default cache if missing."""
    src = default_models_dir()
    if not (src / "smollm2-135m" / "model.safetensors").exists():
        env_backup = os.environ.pop("PATCHBOARD_CACHE_DIR", None)
        try:
            from patching.core.models import embedded_folder

            embedded_folder()
        finally:
            if env_backup is not None:
                os.environ["PATCHBOARD_CACHE_DIR"] = env_backup
    (cache / "models").symlink_to(src, target_is_directory=True)


def embedded_fingerprint(cache: Path) -> str:
    """The embedded model's fingerprint (its sidecar file; written by loading
    the model once when missing)."""
    p = cache / "models" / "smollm2-135m" / "fingerprint.txt"
    if not p.exists():
        from patching.core.models import load_model

        load_model("smollm2-135m")
    return p.read_text().strip()


def populate_store(cache: Path, specs=None, compute: bool = False) -> list:
    """Write results for ``specs`` into ``cache``'s store.

    ``compute=True`` runs the real engine (``patching.api.run``; minutes on a
    busy CPU). By default the rows are *synthetic but well-formed*: the real
    prompts' tokens (the task generator on the real tokenizer), the model's
    real shape and fingerprint, and deterministic pseudo-random effects with a
    few strong cells, stored under the spec's real cache key. UI tests only
    need a stored result that the app finds and draws; the engine has its own
    tests.
    """
    import numpy as np
    import pandas as pd

    from patching.core.data import build_dataset
    from patching.core.models import embedded_tokenizer
    from patching.core.spec import ENGINE_VERSION
    from patching.store import Store
    from patching.methods.activation import cells_for
    from patching.core import tasks

    specs = [s.validated() for s in (specs or _spec_list())]
    os.environ["PATCHBOARD_CACHE_DIR"] = str(cache)
    store = Store(cache / "results.sqlite")
    if compute:
        from patching.service import run

        return [run(s, store) for s in specs]
    fp = embedded_fingerprint(cache)
    tok = embedded_tokenizer()
    import json

    cfg = json.loads((cache / "models" / "smollm2-135m" / "config.json").read_text())
    n_layers, n_heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    for s in specs:
        pairs = tasks.generate(s.task, tok, s.n_pairs, s.seed, ioi_corrupt=s.ioi_corrupt)
        ds = build_dataset(pairs, tok, s.corruption)
        cells = cells_for(s.component, n_layers, n_heads, ds.seq_len, s.window)
        rng = np.random.default_rng(zlib.crc32(s.component.encode()) + s.window)
        base = rng.normal(0, 0.02, len(cells))
        base[rng.choice(len(cells), 4, replace=False)] += [0.6, 0.35, -0.3, 0.25]
        rows = []
        for c, v in zip(cells, base):
            rows.append({"component": s.component, "layer": c.layer, "head": c.head, "pos": c.pos,
                         "pos_label": ds.position_labels[c.pos] if c.pos is not None else "",
                         "logit_diff": float(v), "prob": float(v) * 0.2, "logprob": float(v) * 1.5, "kl": float(v) * 0.8})
        table = pd.DataFrame(rows)
        if s.window > 1:
            for m in ("logit_diff", "prob", "logprob", "kl"):
                table[f"sum_{m}"] = table[m] * 0.7
                table[f"single_{m}"] = table[m] * 0.3
        for col in ("head", "pos"):
            table[col] = table[col].astype("Int64")
        baselines = {"clean_logit_diff": 2.5, "corrupt_logit_diff": -4.9, "clean_prob": 0.2, "corrupt_prob": 0.004,
                     "clean_logprob": -2.1, "corrupt_logprob": -6.7, "corrupt_kl": 1.4, "clean_accuracy": 1.0}
        meta = {"n_pairs": ds.n, "rows": ds.n, "seq_len": ds.seq_len, "n_layers": n_layers, "n_heads": n_heads,
                "position_labels": ds.position_labels, "clean_tokens": ds.clean_strs, "corrupt_tokens": ds.corrupt_strs,
                "key_positions": ds.key_positions[0], "sigma": None, "compute_seconds": 1.0, "warnings": [],
                "model": "smollm2-135m", "model_fingerprint": fp, "synthetic": True}
        store.put(s.cache_key(fp), "activation", s.to_json(), s.label(), s.model, fp, ENGINE_VERSION, 1.0, baselines, meta, table)
    return specs


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


def start_server(cache: Path, port: int | None = None, timeout: float = 90, env: dict | None = None) -> Server:
    """``streamlit run app.py`` on ``port`` (a free one by default) with
    PATCHBOARD_CACHE_DIR=cache; waits for the health endpoint."""
    port = port or free_port()
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
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        stop_server(Server(url, proc, cache, log))
        raise RuntimeError(f"streamlit did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    # Warm the process (imports torch etc.) so the first timed view is representative.
    return Server(url, proc, cache, log)


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


# ---------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="module")
def populated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pbcache")
    link_models(cache)
    old = os.environ.get("PATCHBOARD_CACHE_DIR")
    try:
        populate_store(cache)
    finally:
        if old is None:
            os.environ.pop("PATCHBOARD_CACHE_DIR", None)
        else:
            os.environ["PATCHBOARD_CACHE_DIR"] = old
    return cache


@pytest.fixture(scope="module")
def server(populated_cache):
    srv = start_server(populated_cache)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def browser():
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
    for _ in range(3):  # the first click can land before the widget is interactive
        box.click()
        try:
            opt.wait_for(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright TimeoutError
            page.keyboard.press("Escape")
    opt.click()


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
