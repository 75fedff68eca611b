"""The Disagreement page (pages/3_Disagreement.py) under AppTest, on copies of
the real grid's store (the fixture's own store is never written): the answer
first (the factor chart's numbers and the sentences equal the library's and
the CLI's), the grid's statistics stored once and read back, old and new
link parameters reopening the same view, bad values explained, the button
computing exactly what is missing; ``grid-method`` adding the method as a
factor on a tiny model; and the guided tour's steps and links."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd

from patching.core.spec import Spec
from patching.store import Store
from patching.studies.disagreement import answer, grid_notebook, stored
from patching.studies.disagreement import grid as disagreement_grid
from tests.helpers.apptest import charts, open_page, qp, texts
from tests.helpers.cli import env_for, make_cache
from tests.helpers.disagreement import BASE, K, S2, cli, cli_args, copy_store, page_query, run_page


def _bars(at) -> list[dict]:
    """The first chart's bars (the Spearman panel of the factor chart)."""
    return json.loads(charts(at)[0].proto.spec)["hconcat"][0]["layer"][0]["data"]["values"]


def _copy(real_grid, tmp_path, name="grid"):
    cache = make_cache(tmp_path / name)
    copy_store(real_grid.cache, cache)
    return cache


def test_page_answers_first_and_stores_its_statistics_once(real_grid, tmp_path, monkeypatch):
    cache = _copy(real_grid, tmp_path)
    a, b = "str/logit_diff/denoise/s2", "gn/prob/noise/s2"
    at = run_page(cache, page_query(a=a, b=b), monkeypatch)
    assert not [x for x in at.button if x.label.startswith("Compute")]  # everything stored: nothing to compute
    store = Store(cache / "results.sqlite")
    assert list(store.list()["kind"]).count("grid_stats") == 1  # computed on the first open and stored
    settings = disagreement_grid.parse_settings(S2, BASE)
    stats, key, new = stored.load_or_compute(store, BASE, settings, real_grid.lm.fingerprint, K)
    assert not new  # the page's row is found again by the library (the same key)
    # the first chart is the factor chart: its bars are the stored per-factor means and intervals, lowest first
    bars = _bars(at)
    assert [x["factor"] for x in bars] == [answer.layout.FACTORS[f] for f in stats.factors["factor"]]
    assert np.allclose([x["value"] for x in bars], stats.factors["spearman"]) and np.allclose([x["lo"] for x in bars], stats.factors["spearman_lo"])
    assert len(stats.factors) == 3  # corruption, metric, direction (one IOI variant)
    # the sentences are the library's, and the CLI prints the same ones
    md = texts(at)
    lines = answer.sentences(stats)
    assert 1 <= len(lines) <= 3 and all(line in md for line in lines)
    r = cli(env_for(cache), *cli_args(), "--settings", S2, "--k", str(K), "--stored-only", "--summary", "--factors", str(tmp_path / "f.csv"))
    assert r.returncode == 0, r.stderr
    assert "grid statistics from the store" in r.stderr and all(f"- {answer.plain(line)}" in r.stderr for line in lines)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "f.csv"), stats.factors, check_dtype=False)
    # and the page's notebook: its code cells run here, on the same store, give the same numbers
    ns: dict = {}
    for cell in grid_notebook.notebook_for_grid(BASE, settings, K).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "notebook", "exec"), ns)  # noqa: S102 - the notebook this page offers
    assert not ns["computed"] and ns["key"] == key
    pd.testing.assert_frame_equal(ns["stats"].factors, stats.factors)
    assert list(store.list()["kind"]).count("grid_stats") == 1
    # the link is written back with the page's parameters, old and new
    q = qp(at)
    assert q["a"] == a and q["b"] == b and q["k"] == str(K) and q["variants"] == "s2" and q["noise-samples"] == "2"
    assert q["stat"] == "spearman" and q["focus"] in set(stats.cells["component"]) and q["n-pairs"] == "2"
    assert "python -m patching compare" in next(c.value for c in at.code) and "--summary" in next(c.value for c in at.code)


def test_a_link_reopens_the_same_view_and_bad_values_are_explained(real_grid, tmp_path, monkeypatch):
    cache = _copy(real_grid, tmp_path)
    at = run_page(cache, page_query(a="str/kl/noise/s2", b="gn/logit_diff/denoise/s2", k="3", units="z", stat="topk_jaccard", focus="L29H1"),
                  monkeypatch)
    link = qp(at)
    at2 = run_page(cache, link, monkeypatch)
    assert qp(at2) == link
    assert at2.radio(key="pb_x_units").value == "z" and at2.selectbox(key="pb_x_focus").value == "L29H1"
    assert at2.selectbox(key="pb_x_a").value == "str/kl/noise/s2" and link["k"] == "3" and link["stat"] == "topk_jaccard"
    assert _bars(at2) == _bars(at)
    # a bad page parameter: a warning and the default, never a traceback
    at3 = run_page(cache, page_query(k="999", a="nope", stat="median", focus="<b>x</b>"), monkeypatch)
    warned = " ".join(w.value for w in at3.warning)
    assert "k" in warned and "stat" in warned
    assert at3.slider(key="pb_x_k").value == 10 and at3.selectbox(key="pb_x_a").value in real_grid.settings
    assert at3.selectbox(key="pb_x_focus").value != "<b>x</b>" and qp(at3)["stat"] == "spearman"


def test_page_computes_only_on_the_button(real_grid, tmp_path, monkeypatch):
    """A grid with one sweep missing: the answer for the stored settings at
    once; the button computes exactly that sweep (with the in-process model)
    and stores it, and the statistics of the whole grid after it."""
    cache = _copy(real_grid, tmp_path, "partial")
    con = sqlite3.connect(cache / "results.sqlite")
    keep = disagreement_grid.grid_specs(BASE, S2)
    drop = keep["str/logit_diff/noise/s2"].cache_key(real_grid.lm.fingerprint)
    con.execute("DELETE FROM results WHERE key=?", (drop,))
    con.commit()
    con.close()
    at = run_page(cache, page_query(), monkeypatch)
    store = Store(cache / "results.sqlite")
    assert store.get(drop) is None
    btn = [x for x in at.button if x.label.startswith("Compute")]
    assert len(btn) == 1 and btn[0].label == "Compute the 1 missing sweep"
    assert any("3 of 4 sweeps are stored" in i.value for i in at.info)
    assert "of the 9 settings" in texts(at) and len(charts(at)) >= 1  # the 9 stored settings are compared already
    kinds = list(store.list()["kind"])
    btn[0].click()
    at.run()
    assert not at.exception, at.exception
    after = list(store.list()["kind"])
    assert after.count("activation") == kinds.count("activation") + 1 and after.count("grid_stats") == kinds.count("grid_stats") + 1
    rec = store.get(drop)
    orig = real_grid.store.get(drop)["table"]
    assert np.allclose(rec["table"]["logit_diff"], orig["logit_diff"], atol=1e-6)
    assert not [x for x in at.button if x.label.startswith("Compute")]
    assert any("1 sweep(s) computed" in x.value for x in at.success)


def test_the_method_is_a_factor_of_its_own(tiny_llama, tmp_path, monkeypatch):
    """AppTest: 'Also estimate with: atp' doubles the grid (in the link), the
    button computes exact and atp sweeps, the scatter defaults to exact vs its
    estimate, and the method is one of the factor chart's bars."""
    import streamlit as st

    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    REGISTRY.add(tiny_llama)  # forgotten below: the next test may register other weights as tiny-llama
    try:
        q = Spec(model="tiny-llama", task="facts", n_pairs=2, component="head").to_query() | {"noise-samples": "2", "grid-method": "atp"}
        at = open_page("pages/3_Disagreement.py", q, timeout=300)
        assert not at.exception, at.exception
        assert at.selectbox(key="pb_x_grid-method").value == "atp"
        assert any("0 of 8 sweeps are stored" in i.value for i in at.info)  # 4 exact + 4 atp
        next(b for b in at.button if b.label.startswith("Compute")).click().run()
        assert not at.exception, at.exception
        assert at.selectbox(key="pb_x_a").value == "str/logit_diff/denoise"
        assert at.selectbox(key="pb_x_b").value == "str/logit_diff/denoise@atp"
        bars = _bars(at)
        assert {x["factor"] for x in bars} == {"corruption", "metric", "direction", "method"}
        stats, _, new = stored.load_or_compute(Store(tmp_path / "results.sqlite"), Spec(model="tiny-llama", task="facts", n_pairs=2,
                                               component="head", noise_samples=2), disagreement_grid.page_settings(
                                                   disagreement_grid.grid_base(Spec(model="tiny-llama", task="facts", n_pairs=2, component="head",
                                                                                    noise_samples=2)), None, "atp"), tiny_llama.fingerprint, 10)
        assert not new and len(stats.agreement) == 24 * 23 // 2 and (stats.agreement["differs_in"] == "method").sum() == 12
        assert "The first 200 of 276 rows" in texts(at)  # long tables: their head on the page, all of them in the download
        assert qp(at)["grid-method"] == "atp"
    finally:
        REGISTRY.forget("tiny-llama")
        st.cache_resource.clear()
