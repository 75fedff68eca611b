"""The shipped demo bundle (patching/demo/demo.zip): it holds exactly the
results behind every page's default link, its numbers are what the code
computes today, and it refuses other weights (a fresh machine's pages on it:
tests/app/test_demo.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from patching import demo
from tests.helpers.store import embedded_key, link_models

pytestmark = pytest.mark.skipif(not demo.DEMO_PATH.exists(), reason="no demo bundle: python -m patching demo build")


@pytest.fixture(scope="module")
def bundle():
    from patching import bundles

    return bundles.read_bundle(demo.DEMO_PATH.read_bytes())


@pytest.mark.integration
def test_demo_holds_the_default_views_and_is_small(bundle):
    """The bundle holds exactly the results of :func:`demo.requests` (the
    pages' defaults) under their keys; the file stays a few MB."""
    fps = {r["model_fingerprint"] for r in bundle.rows}
    assert len(fps) == 1
    fp = fps.pop()
    keys = {r["key"] for r in bundle.rows}
    wanted = {embedded_key(r, fp) for r in demo.requests()}
    assert wanted <= keys, "rebuild it: python -m patching demo build"
    # Beside the requests: the default grid's statistics, keyed by its sweeps' keys and stamps (the import
    # recomputes that key from the bundled sweeps, patching/kinds.py).
    extra = [r for r in bundle.rows if r["key"] not in wanted]
    assert [r["kind"] for r in extra] == ["grid_stats"], "rebuild it: python -m patching demo build"
    assert set(json.loads(extra[0]["meta_json"])["sweep_keys"].values()) <= keys
    assert demo.DEMO_PATH.stat().st_size < 8 << 20
    assert {r["kind"] for r in bundle.rows} == {"activation", "paths", "hypothesis", "circuit_curve", "grid_stats"}


#: Columns added after the demo was built: its stored rows lack them (their keys and every other
#: number are unchanged, so the 36-setting grid is not recomputed). prob_diff: asking a page for it
#: computes that sweep again (patching/service.py); measured: derived on read from meta["noop_cells"]
#: (patching/results.py).
LATER_METRICS = {"prob_diff", "measured"}


def _numeric_equal(a: pd.DataFrame, b: pd.DataFrame, on: list[str]) -> None:
    assert [c for c in b.columns if c not in LATER_METRICS or c in a.columns] == list(a.columns)
    b = b[list(a.columns)]
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
        stored = pd.read_parquet(io.BytesIO(rows[embedded_key(req, embedded.fingerprint)]["table_parquet"]))
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
