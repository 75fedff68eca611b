"""A fresh machine (patching/demo/, patching/warmup.py): after the README's
first step, ``python -m patching.warmup`` (twice: idempotent), every page's
default link draws the shipped demo's results without computing or loading a
model (AppTest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patching import demo
from tests.helpers import ROOT
from tests.helpers.apptest import charts, open_page
from tests.helpers.store import embedded_key, link_models

pytestmark = pytest.mark.skipif(not demo.DEMO_PATH.exists(), reason="no demo bundle: python -m patching demo build")


def _warmup(cache: Path) -> tuple[str, float]:
    env = dict(os.environ, PATCHBOARD_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "patching.warmup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout + out.stderr, time.time() - t


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A fresh cache folder (the converted model linked in, no store) after
    the README's first step, ``python -m patching.warmup``."""
    cache = tmp_path_factory.mktemp("fresh")
    link_models(cache)
    first, _ = _warmup(cache)
    n = len(demo.manifest()["results"])
    assert f"demo: imported {len({r['key'] for r in demo.manifest()['results']})} result(s)" in first
    again, _ = _warmup(cache)
    # idempotent: this line is printed before the bundle would be read (only the
    # manifest and the store's keys are); no wall-clock bound, which load breaks
    assert f"demo: all {n} results already stored" in again
    return cache


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.info] + [e.value for e in at.warning]
    return "\n".join(str(p) for p in parts)


def test_fresh_cache_and_warmup_draw_every_default_link_without_the_model(fresh_cache, monkeypatch):
    """Patch (IOI; facts with a window), Disagreement (the full default grid),
    Paths (sweep; IOI hypothesis) and Circuits (the IOI curve and the circuit
    at its knee) open on drawn results; computing or loading a model would raise."""
    import streamlit as st

    from patching import service
    from patching.core.registry import REGISTRY
    from patching.core.spec import Spec
    from patching.store import Store

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(fresh_cache))
    st.cache_resource.clear()

    def refuse(*a, **k):
        raise AssertionError("a default link must not compute or load a model")

    monkeypatch.setattr(REGISTRY, "get", refuse)
    monkeypatch.setattr(service, "run", refuse)
    before = Store(fresh_cache / "results.sqlite").count()
    fp = (fresh_cache / "models" / "smollm2-135m" / "fingerprint.txt").read_text().strip()
    keys = {r["key"] for r in demo.manifest()["results"]}
    q = Spec(model="smollm2-135m").validated().to_query()
    facts = Spec(model="smollm2-135m", task="facts", component="mlp_out", window=demo.FACTS_WINDOW).validated().to_query()
    views = [("app.py", {}, 1), ("app.py", q, 1), ("app.py", facts, 2), ("pages/3_Disagreement.py", {}, 3),
             ("pages/4_Paths.py", {}, 1), ("pages/4_Paths.py", {"mode": "hypothesis", "example": "ioi"}, 0),
             ("pages/6_Circuits.py", {}, 2)]
    for page, query, n_charts in views:
        at = open_page(page, query)
        assert not at.exception, (page, query, at.exception)
        assert not at.error, (page, query, [e.value for e in at.error])
        text = _texts(at)
        assert "not stored yet" not in text and "Nothing to compare" not in text, (page, query)
        assert len(charts(at)) >= n_charts, (page, query)
        if "Disagreement" in page:
            held = [s for s in demo.grid_specs() if embedded_key(s, fp) in keys]
            if len(held) == len(demo.grid_specs()):
                assert "sweeps are stored" not in text
                assert not [b for b in at.button if b.label.startswith("Compute")]
            else:  # a demo built in part (demo build --no-compute) shows what it holds
                assert f"{len(held)} of {len(demo.grid_specs())} sweeps are stored" in text
        if query.get("mode") == "hypothesis":
            # the demo's numbers were computed elsewhere: imported, and the pages say so (issue 22)
            assert [m.label for m in at.metric][0] == "Proportion explained (imported)"
        if "Circuits" in page:
            assert [m.label for m in at.metric][:2] == ["CPR (imported)", "CMD (imported)"]
    assert Store(fresh_cache / "results.sqlite").count() == before
