"""The Paths page (pages/4_Paths.py): AppTest with a tiny random model (the
whole compute path: sweep, hypothesis, attribution, links), and one
real-browser test of a stored sweep and hypothesis and their share link."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from patching.core import codec
from patching.core.spec import Spec

from tests.helpers import ROOT
from tests.helpers.browser import new_page, share_link, start_server, stop_server, wait_for_app, wait_for_heatmap
from tests.helpers.store import link_models, populate_store

PAGE = str(ROOT / "pages" / "4_Paths.py")
ALL_PATHS = {"name": "all paths", "paths": [{"sender": "*", "receiver": "*"}]}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    # test_paths.py's tiny Llama: HF's default init, scaled by 4
    return tiny_model("llama", max_position_embeddings=64, initializer_range=0.02, scale=4.0)


@pytest.fixture
def env(tmp_path, monkeypatch, tiny):
    import streamlit as st

    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    REGISTRY.add(tiny)
    yield tmp_path
    REGISTRY.evict("tiny-llama")
    st.cache_resource.clear()


SPEC = Spec(model="tiny-llama", task="ioi", n_pairs=2, seed=0)


def open_page(query: dict) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=240)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def qp(at: AppTest) -> dict:
    return {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    parts += [e.value for e in at.info] + [e.value for e in at.warning]
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list:
    return [e for e in at.main if getattr(e, "type", "") == "vega_lite_chart"]


def test_sweep_runs_stores_and_links(env):
    q = SPEC.to_query() | {"mode": "sweep", "receivers": "2.1:q,2.1:k"}
    at = open_page(q)
    assert not at.exception, at.exception
    assert "not stored yet" in texts(at)
    assert at.text_input(key="pb_x_receivers").value == "2.1:q,2.1:k"
    at.button(key="pb_paths_run").click().run()
    assert not at.exception, at.exception
    assert len(charts(at)) == 1
    assert "Read from the store" in texts(at) and "KV group" in texts(at)
    url = qp(at)
    assert url["receivers"] == "2.1:q,2.1:k" and url["mode"] == "sweep" and url["model"] == "tiny-llama"
    at2 = open_page(url)  # the link, in a fresh session: straight from the store
    assert not at2.exception and len(charts(at2)) == 1
    # Editing the receivers updates the link.
    at2.text_input(key="pb_x_receivers").input("logits").run()
    assert qp(at2)["receivers"] == "logits" and "not stored yet" in texts(at2)


def test_hypothesis_evaluates_with_attribution_and_inline_link(env):
    q = SPEC.to_query() | {"mode": "hypothesis", "hypothesis": codec.encode_hypothesis(json.dumps(ALL_PATHS)), "pair": "1", "delta": "loss"}
    at = open_page(q)
    assert not at.exception, at.exception
    assert json.loads(at.text_area(key="pb_x_hypothesis").value) == ALL_PATHS
    assert at.selectbox(key="pb_x_example").value == "custom"
    at.button(key="pb_hyp_run").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Proportion explained"] == "100.0 %"
    assert "Per-token attribution" in [s.value for s in at.subheader]
    assert "Pair 1:" in texts(at)
    url = qp(at)
    assert codec.decode_hypothesis(url["hypothesis"]) == json.dumps(ALL_PATHS) and url["pair"] == "1" and url["delta"] == "loss"
    # Edit: no path at all explains nothing; the link carries the edited text.
    at.text_area(key="pb_x_hypothesis").input(json.dumps({"paths": []})).run()
    at.button(key="pb_hyp_run").click().run()
    assert {m.label: m.value for m in at.metric}["Proportion explained"] == "0.0 %"
    assert json.loads(codec.decode_hypothesis(qp(at)["hypothesis"])) == {"paths": []}


@pytest.mark.parametrize("extra,field,needle", [
    ({"mode": "sweep", "receivers": "7.0:q"}, "receivers", "layer 7 does not exist"),
    ({"mode": "hypothesis", "hypothesis": codec.encode_hypothesis('{"paths": [{"sender": "2.0", "receiver": "1.0:q"}]}')}, "hypothesis", "is not after sender 2.0"),
    ({"mode": "hypothesis", "example": "induction"}, "hypothesis", "does not exist"),  # the example is for the 30-layer embedded model
])
def test_bad_inputs_show_one_clear_error(env, extra, field, needle):
    at = open_page(SPEC.to_query() | extra)
    assert not at.exception, at.exception
    errs = [e.value for e in at.error]
    shown = re.sub(r"\\(.)", r"\1", errs[0])  # user values are markdown-escaped: compare the text as rendered
    assert len(errs) == 1 and f"**{field}**" in errs[0] and needle in shown


def test_malformed_link_values_fall_back(env):
    at = open_page(SPEC.to_query() | {"mode": "nonsense"})
    assert not at.exception, at.exception
    assert "**mode**" in " ".join(w.value for w in at.warning) and qp(at)["mode"] == "sweep"
    at = open_page(SPEC.to_query() | {"mode": "hypothesis", "hypothesis": "%%%", "pair": "x"})
    assert not at.exception, at.exception
    warns = " ".join(w.value for w in at.warning)
    assert "**hypothesis**" in warns and "**pair**" in warns
    assert at.selectbox(key="pb_x_example").value == "induction"  # the default example


# ---------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def paths_server(tmp_path_factory):
    """A server whose store holds a sweep and a hypothesis evaluation for the
    embedded model (synthetic, well-formed rows under their real keys: the
    engine has its own tests; this checks the page and its link)."""
    import numpy as np
    import pandas as pd

    from patching import service
    from patching.core.spec import ENGINE_VERSION
    from patching.methods import graph as G
    from patching.methods import hypothesis_format as HF
    from patching.store import Store

    cache = tmp_path_factory.mktemp("pathscache")
    link_models(cache)
    old = os.environ.get("PATCHBOARD_CACHE_DIR")
    try:
        populate_store(cache)  # also writes the embedded fingerprint sidecar
        fp = (cache / "models" / "smollm2-135m" / "fingerprint.txt").read_text().strip()
        geo = G.geometry_for("smollm2-135m")
        store = Store(cache / "results.sqlite")
        spec = G.paths_spec(Spec(task="ioi", n_pairs=2, seed=0))
        req = G.SweepRequest.make(geo, "logits")
        rng = np.random.default_rng(0)
        rows = [{"component": "embed", "layer": None, "head": None, "pos": None, "pos_label": ""}]
        for l in range(geo.n_layers):
            rows += [{"component": "head", "layer": l, "head": h, "pos": None, "pos_label": ""} for h in range(geo.n_heads)]
            rows.append({"component": "mlp", "layer": l, "head": None, "pos": None, "pos_label": ""})
        t = pd.DataFrame(rows)
        v = rng.normal(0, 0.02, len(t))
        v[[40, 200, 250]] = [0.5, 0.3, -0.25]
        for m, f in (("logit_diff", 1.0), ("prob", 0.1), ("logprob", 1.3), ("kl", 0.7)):
            t[m] = v * f
        for c in ("layer", "head", "pos"):
            t[c] = t[c].astype("Int64")
        meta = {"receivers": req.receivers, "receivers_described": ["logits"], "senders": "*", "sender_positions": "all", "rows": 2,
                "n_layers": geo.n_layers, "n_heads": geo.n_heads, "compute_seconds": 1.0, "warnings": [], "synthetic": True}
        base = {"clean_logit_diff": 2.5, "corrupt_logit_diff": -4.9, "corrupt_kl": 1.4}
        store.put(service.key_of(service.PathSweep(spec, "logits"), fp, geo), "paths", spec.to_json(), "synthetic paths", "smollm2-135m", fp, ENGINE_VERSION, 1.0, base, meta, t)

        hyp = HF.parse(json.loads((ROOT / "examples" / "induction.json").read_text()), geo)
        hspec = HF.hypothesis_spec(Spec(task="induction", n_pairs=2, seed=0))
        toks = [["<|im_start|>", " a", " b", " a"], ["<|im_start|>", " c", " d", " c"]]
        att = {"tokens": toks, "targets": [["a", " b", " a", " b"], ["c", " d", " c", " d"]],
               "loss_clean": [[5.0, 4.0, 3.0, 1.0]] * 2, "loss_hypothesis": [[5.0, 4.0, 3.5, 2.5]] * 2,
               "loss_counterfactual": [[5.0, 4.0, 4.0, 6.0]] * 2}
        table = pd.DataFrame([{"delta": d, "aue": 0.8, "ate": 2.0, "proportion_explained": 0.6, "max_unexplained": 1.1} for d in HF.DELTAS])
        store.put(service.key_of(service.HypothesisEval(hspec, hyp), fp, geo), "hypothesis", hspec.to_json(), "synthetic hypothesis", "smollm2-135m", fp,
                  ENGINE_VERSION, 1.0, base, {"attribution": att, "rows": 2, "n_edges": len(hyp.edges), "warnings": [], "synthetic": True}, table)
    finally:
        if old is None:
            os.environ.pop("PATCHBOARD_CACHE_DIR", None)
        else:
            os.environ["PATCHBOARD_CACHE_DIR"] = old
    srv = start_server(cache)
    try:
        yield srv
    finally:
        stop_server(srv)


def first_metric(page, label: str = "Proportion explained") -> str:
    """The text (label and value) of the st.metric labelled ``label``, once
    drawn (waiting for it by its label: a rerun may still be replacing the
    page's elements when the first metric appears)."""
    wait_for_app(page)
    m = page.locator("[data-testid='stMetric']", has_text=label).first
    m.wait_for(timeout=60_000)
    return m.inner_text()


def test_browser_paths_page_and_its_link(paths_server, browser):
    page = new_page(browser)
    q = Spec(task="ioi", n_pairs=2, seed=0).to_query() | {"mode": "sweep", "receivers": "logits"}
    page.goto(f"{paths_server.url}Paths?{urlencode(q)}")
    wait_for_heatmap(page)
    wait_for_app(page)
    body = page.inner_text("body")
    assert "Read from the store" in body and "Traceback" not in body
    link = share_link(page)
    got = dict(parse_qsl(urlsplit(link).query))
    assert got["receivers"] == "logits" and got["mode"] == "sweep" and urlsplit(link).path.endswith("/Paths")
    # The hypothesis view: proportion explained and the coloured attribution, then its link in a new tab.
    q = Spec(task="induction", n_pairs=2, seed=0).to_query() | {"mode": "hypothesis", "example": "induction", "pair": "1"}
    page.goto(f"{paths_server.url}Paths?{urlencode(q)}")
    assert "Proportion explained" in first_metric(page) and "60.0 %" in first_metric(page)
    page.locator("table[aria-label='per-token attribution']").wait_for(timeout=30_000)
    link = share_link(page)
    other = new_page(browser)
    other.goto(link)
    assert "60.0 %" in first_metric(other) and "Pair 1:" in other.inner_text("body")
    page.context.close()
    other.context.close()
