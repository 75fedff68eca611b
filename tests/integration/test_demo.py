"""The shipped demo bundle (patching/demo/demo.zip): it holds exactly the
results behind every page's default link, its numbers are what the code
computes today, and a fresh cache folder + warmup opens every page's default
link on a drawn result without computing or loading the model."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patching import demo

from tests.helpers import ROOT
from tests.helpers.store import link_models

pytestmark = pytest.mark.skipif(not demo.DEMO_PATH.exists(), reason="no demo bundle: python -m patching demo build")


@pytest.fixture(scope="module")
def bundle():
    from patching import bundles

    return bundles.read_bundle(demo.DEMO_PATH.read_bytes())


def _key(req, fp):
    from patching import service
    from patching.methods.graph import geometry_for

    global _GEO
    _GEO = _GEO or geometry_for("smollm2-135m")
    return service.key_of(req, fp, _GEO)


_GEO = None


@pytest.mark.integration
def test_demo_holds_the_default_views_and_is_small(bundle):
    """The bundle holds exactly the results of :func:`demo.requests` (the
    pages' defaults) under their keys; the file stays a few MB."""
    fps = {r["model_fingerprint"] for r in bundle.rows}
    assert len(fps) == 1
    fp = fps.pop()
    keys = {r["key"] for r in bundle.rows}
    assert keys == {_key(r, fp) for r in demo.requests()}, "rebuild it: python -m patching demo build"
    assert demo.DEMO_PATH.stat().st_size < 8 << 20
    assert {r["kind"] for r in bundle.rows} == {"activation", "paths", "hypothesis"}


def _numeric_equal(a: pd.DataFrame, b: pd.DataFrame, on: list[str]) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    a = a.sort_values(on).reset_index(drop=True)
    b = b.sort_values(on).reset_index(drop=True)
    for c in a.columns:
        if pd.api.types.is_float_dtype(a[c]):
            x, y = a[c].to_numpy(float), b[c].to_numpy(float)
            assert np.array_equal(np.isnan(x), np.isnan(y)), c
            assert np.nanmax(np.abs(x - y), initial=0.0) < 1e-4, c
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


@pytest.mark.integration
def test_demo_numbers_are_what_the_code_computes(bundle, embedded):
    """Recompute the cheapest demo results (a head sweep by key/value group,
    the default path sweep, the IOI hypothesis) and match within 1e-4."""
    from patching import service
    from patching.core.spec import Spec

    assert embedded.fingerprint == bundle.rows[0]["model_fingerprint"], "the demo was built on other weights: rebuild it"
    rows = {r["key"]: r for r in bundle.rows}
    spec = Spec(model="smollm2-135m")
    cases = [(Spec(model="smollm2-135m", component="head_k"), ["component", "layer", "head"]),
             (service.PathSweep(spec, "logits", "*", None, False, "direct"), ["component", "layer", "head"]),
             (service.HypothesisEval(spec, demo.hypothesis_text("ioi")), ["delta"])]
    for req, on in cases:
        stored = pd.read_parquet(io.BytesIO(rows[_key(req, embedded.fingerprint)]["table_parquet"]))
        fresh = service.run(req, None, lm=embedded, use_store=False).table
        _numeric_equal(stored.reset_index(drop=True), fresh.reset_index(drop=True), [c for c in on if c in fresh.columns])


@pytest.mark.integration
def test_demo_import_refuses_other_weights_in_one_line(tmp_path, monkeypatch):
    from patching.store import Store

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-135m" / "fingerprint.txt").write_text("0123456789abcdef")
    store = Store(tmp_path / "results.sqlite")
    line = demo.ensure_imported(store)
    assert "other weights" in line and "demo build" in line and "\n" not in line
    assert store.count() == 0


# ---------------------------------------------------------------- a fresh machine


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
    assert f"demo: all {n} results already stored" in again
    # idempotent and fast: only the manifest and the store's keys are read
    assert float(re.search(r"stored \(([0-9.]+)s\)", again).group(1)) < 3.0
    return cache


def _app_test(page: str, query: dict):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / page), default_timeout=240)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _charts(at) -> list:
    return [e for e in at.main if getattr(e, "type", "") == "vega_lite_chart"]


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.info] + [e.value for e in at.warning]
    return "\n".join(str(p) for p in parts)


@pytest.mark.app
def test_fresh_cache_and_warmup_draw_every_default_link_without_the_model(fresh_cache, monkeypatch):
    """Patch (IOI; facts with a window), Disagreement (the full default grid)
    and Paths (sweep; IOI hypothesis) open on drawn results; computing or
    loading a model would raise."""
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
             ("pages/4_Paths.py", {}, 1), ("pages/4_Paths.py", {"mode": "hypothesis", "example": "ioi"}, 0)]
    for page, query, n_charts in views:
        at = _app_test(page, query)
        assert not at.exception, (page, query, at.exception)
        assert not at.error, (page, query, [e.value for e in at.error])
        text = _texts(at)
        assert "not stored yet" not in text and "Nothing to compare" not in text, (page, query)
        assert len(_charts(at)) >= n_charts, (page, query)
        if "Disagreement" in page:
            held = [s for s in demo.grid_specs() if _key(s, fp) in keys]
            if len(held) == len(demo.grid_specs()):
                assert "sweeps are stored" not in text
                assert not [b for b in at.button if b.label.startswith("Compute")]
            else:  # a demo built in part (demo build --no-compute) shows what it holds
                assert f"{len(held)} of {len(demo.grid_specs())} sweeps are stored" in text
        if query.get("mode") == "hypothesis":
            assert [m.label for m in at.metric][0] == "Proportion explained"
    assert Store(fresh_cache / "results.sqlite").count() == before


@pytest.mark.integration
def test_demo_cli_rebundles_what_is_stored_and_refuses_an_empty_store(tmp_path, monkeypatch, capsys):
    """``demo build --no-compute`` writes exactly the stored demo results (an
    imported demo bundles back to the same keys) and, with none stored, says
    so in one line, writing nothing."""
    from patching import bundles
    from patching.cli import main

    cache = tmp_path / "cache"
    cache.mkdir()
    link_models(cache)
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(cache))
    out = tmp_path / "again.zip"
    assert main(["demo", "build", "--no-compute", "--out", str(out)]) == 2
    assert "none of the demo's results is stored" in capsys.readouterr().err and not out.exists()
    assert main(["demo", "import"]) == 0
    assert "demo: imported" in capsys.readouterr().err
    assert main(["demo", "build", "--no-compute", "--out", str(out)]) == 0
    again = {r["key"] for r in bundles.read_bundle(out.read_bytes()).rows}
    assert again == {r["key"] for r in demo.manifest()["results"]}
