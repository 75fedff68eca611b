"""Streamlit AppTest tests of the pages this repo's UI owns: Patch (app.py's
default page), Library and How to read this.

The store is pre-populated with well-formed results for the embedded model
(``tests.helpers.store.populate_store``), so the pages read it without loading
the model; one test computes for real with a tiny random model.
"""

from __future__ import annotations


import pytest
from streamlit.testing.v1 import AppTest

from patching.core.pairs import Pair
from patching.core.spec import Spec
from tests.helpers import ROOT, env_restored
from tests.helpers.apptest import charts, open_page, qp, texts
from tests.helpers.store import link_models, populate_store

APP = str(ROOT / "app.py")
STORED = Spec(task="ioi", n_pairs=2, seed=0, component="head")


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """A cache of its own (models linked, 3 stored results) for this module."""
    cache = tmp_path_factory.mktemp("appcache")
    link_models(cache)
    with env_restored("PATCHBOARD_CACHE_DIR"):
        populate_store(cache)  # points PATCHBOARD_CACHE_DIR at the cache
        yield cache


@pytest.fixture
def env(app_cache, monkeypatch):
    """This module's stored results, no model registered (in place of
    tests/app/conftest.py's ``env``)."""
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(app_cache))
    monkeypatch.delenv("PATCHBOARD_ALLOWED_MODELS", raising=False)
    return app_cache


def open_app(query: dict | None = None) -> AppTest:
    """The Patch page (app.py) opened on a link with ``query``."""
    return open_page(APP, query, timeout=180)


# ---------------------------------------------------------------- Patch page


def test_stored_link_shows_result_without_model(env):
    from patching.core.registry import REGISTRY

    at = open_app(STORED.to_query())
    assert not at.exception
    assert not at.error
    assert len(charts(at)) == 1
    assert "Read from the store" in texts(at)
    # every widget restored from the link
    assert at.selectbox(key="pb_w_task").value == "ioi"
    assert at.number_input(key="pb_w_n_pairs").value == 2
    assert at.selectbox(key="pb_w_component").value == "head"
    assert qp(at) == STORED.to_query()
    assert REGISTRY.peek("smollm2-135m") is None, "a stored result must show without loading the model"
    # baselines + top table + downloads
    assert [m.label for m in at.metric][:2] == ["Clean logit diff", "Corrupt logit diff"]
    assert any("L" in h.proto.body and "pb-table" in h.proto.body for h in at.get("html"))
    labels = {b.label for b in at.get("download_button")}
    assert {"PNG", "SVG", "CSV", "JSON", "Download bundle (this result)", "Download notebook"} <= labels


def test_cell_link_opens_the_drill_down_without_the_model(env):
    from patching.core.registry import REGISTRY

    at = open_app(STORED.to_query() | {"cell": "L1H2"})
    assert not at.exception and not at.error
    assert any(h.value == "Component L1H2" for h in at.subheader)
    assert any("L1H2's effect under every metric" in c.value for c in at.caption)
    assert any("attention pattern" in b.label for b in at.button)  # a button, never computed by a link
    assert qp(at)["cell"] == "L1H2"
    assert REGISTRY.peek("smollm2-135m") is None
    at = open_app(STORED.to_query() | {"cell": "![x](http://evil/x.png)"})
    assert not at.exception and "cell" not in qp(at)


def test_patch_page_lists_every_pair_of_the_dataset(env):
    """The expander shows the exact list ``python -m patching pairs`` writes."""
    import html

    from patching.core import tasks
    from patching.core.models import embedded_tokenizer

    at = open_app(STORED.to_query())
    assert not at.exception
    assert any(e.label == "All 2 prompt pair(s) this result averages over" for e in at.get("expander"))
    body = " ".join(h.proto.body for h in at.get("html"))
    for row in tasks.pairs_table(STORED, embedded_tokenizer()):
        assert html.escape(row["clean"]) in body and html.escape(row["corrupt"]) in body
    assert "pairs.csv" in {b.label for b in at.get("download_button")}


def test_metric_change_updates_url_and_reads_same_result(env):
    at = open_app(STORED.to_query())
    at.selectbox(key="pb_w_metric").select("prob").run()
    assert not at.exception
    assert qp(at)["metric"] == "prob"
    assert len(charts(at)) == 1
    assert any("<th>prob</th>" in h.proto.body for h in at.get("html"))
    at.radio(key="pb_w_direction").set_value("noise").run()
    assert qp(at)["direction"] == "noise"
    assert "not stored yet" in texts(at)  # a different computation: nothing starts by itself
    assert at.button(key="pb_run")


def test_every_widget_change_updates_url(env):
    at = open_app(STORED.to_query())
    at.number_input(key="pb_w_n_pairs").set_value(3).run()
    assert qp(at)["n-pairs"] == "3"
    at.radio(key="pb_w_corruption").set_value("gn").run()
    at.number_input(key="pb_w_noise_scale").set_value(2.5).run()
    at.number_input(key="pb_w_noise_samples").set_value(4).run()
    at.selectbox(key="pb_w_component").select("mlp_out").run()
    at.number_input(key="pb_w_window").set_value(5).run()
    at.selectbox(key="pb_w_task").select("facts").run()
    assert not at.exception
    q = qp(at)
    assert (q["corruption"], q["noise-scale"], q["noise-samples"], q["component"], q["window"], q["task"]) == \
        ("gn", "2.5", "4", "mlp_out", "5", "facts")
    assert Spec.from_query(q) == Spec(task="facts", n_pairs=3, corruption="gn", noise_scale=2.5, noise_samples=4,
                                      component="mlp_out", window=5).validated()


def test_hidden_widget_comes_back_with_link_value(env):
    """Switching str -> gn shows the noise widgets with the link's values (3, 10),
    not the widgets' minimum."""
    at = open_app(STORED.to_query())
    at.radio(key="pb_w_corruption").set_value("gn").run()
    assert at.number_input(key="pb_w_noise_scale").value == 3.0
    assert at.number_input(key="pb_w_noise_samples").value == 10
    assert qp(at)["noise-scale"] == "3"


def test_view_choice_travels_in_link(env):
    spec = Spec(task="ioi", n_pairs=2, component="mlp_out", window=3)
    at = open_app(spec.to_query())
    opts = at.selectbox(key="pb_x_view-pos").options
    at.selectbox(key="pb_x_view-pos").select_index(2).run()
    q = qp(at)
    assert q["view-pos"] == "2"
    at2 = open_app(q)
    assert at2.selectbox(key="pb_x_view-pos").value == 2
    assert len(opts) > 3


def test_link_restores_every_widget(env):
    spec = Spec(task="ioi", n_pairs=3, seed=7, corruption="gn", noise_scale=2.0, noise_samples=5, metric="kl",
                direction="noise", component="attn_out", window=3, ioi_corrupt="abc").validated()
    at = open_app(spec.to_query())
    assert not at.exception and not at.error
    w = lambda kind, key: getattr(at, kind)(key="pb_w_" + key).value  # noqa: E731
    assert w("selectbox", "task") == "ioi" and w("selectbox", "ioi_corrupt") == "abc"
    assert w("number_input", "n_pairs") == 3 and w("number_input", "seed") == 7
    assert w("radio", "corruption") == "gn" and w("number_input", "noise_scale") == 2.0
    assert w("number_input", "noise_samples") == 5 and w("selectbox", "metric") == "kl"
    assert w("radio", "direction") == "noise" and w("selectbox", "component") == "attn_out"
    assert w("number_input", "window") == 3
    assert qp(at) == spec.to_query()
    # not stored: the tokens are previewed from the tokenizer and a Run button waits
    assert any("pb-tok" in h.proto.body for h in at.get("html"))
    assert at.button(key="pb_run")


@pytest.mark.parametrize("query, field", [
    ({"n-pairs": "abc"}, "n-pairs"),
    ({"corruption": "zzz"}, "corruption"),
    ({"component": "head", "window": "4"}, "window"),
    ({"model": "/etc/passwd"}, "model"),
    ({"model": "some/hub-model"}, "model"),
    ({"pairs": "not-base64!!"}, "pairs"),
    ({"task": "ioi", "pairs": "eJyrVg=="}, "pairs"),
])
def test_malformed_link_shows_message_and_defaults(env, query, field):
    at = open_app(query)
    assert not at.exception
    msg = " ".join(e.value for e in at.error)
    assert "This link has a problem" in msg and field in msg
    assert qp(at) == Spec().validated().to_query()
    assert at.selectbox(key="pb_w_task").value == "ioi"


def test_allowed_hub_model_offered(env, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "gpt2,*")
    at = open_app(Spec(model="EleutherAI/pythia-14m", task="ioi").to_query())
    assert not at.error
    assert at.selectbox(key="pb_w_model").value == "Another model…"
    assert at.text_input(key="pb_w_model_other").value == "EleutherAI/pythia-14m"
    assert "gpt2" in at.selectbox(key="pb_w_model").options
    assert qp(at)["model"] == "EleutherAI/pythia-14m"


def test_custom_pairs_travel_in_the_link(env):
    pairs = (Pair("When Mary and John went to the store, John gave a drink to",
                  "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),)
    spec = Spec(task=None, pairs=pairs, component="resid_pre").validated()
    at = open_app(spec.to_query())
    assert not at.exception and not at.error
    assert at.radio(key="pb_w_source").value == "pairs"
    assert "When Mary and John" in at.text_area(key="pb_w_pairs_text").value
    assert qp(at)["pairs"] == spec.to_query()["pairs"]
    # typing CSV instead
    csv = 'clean,corrupt,answer,counter_answer\n"The capital city of France is","The capital city of Italy is", Paris, Rome\n'
    at.text_area(key="pb_w_pairs_text").input(csv).run()
    assert not at.exception
    q = qp(at)
    assert Spec.from_query(q).pairs[0].answer == " Paris"
    assert "/" not in q["pairs"] or q["pairs"].count("/") == 0  # URL-safe, no path


def test_bad_custom_pairs_explained(env):
    at = open_app({"model": "smollm2-135m"})
    at.radio(key="pb_w_source").set_value("pairs").run()
    at.text_area(key="pb_w_pairs_text").input('{"clean": "a"}').run()
    assert not at.exception
    assert any("counter_answer" in e.value or "lacks" in e.value for e in at.error)
    assert any("sidebar needs fixing" in i.value for i in at.info)
    # unequal token lengths are caught by the preview, before any run
    at.text_area(key="pb_w_pairs_text").input(
        '{"clean": "When Mary and John went out, John gave it to", "corrupt": "When Mary and John went out, Christopher Robin gave it to", '
        '"answer": " Mary", "counter_answer": " John"}').run()
    assert not at.exception
    assert any("tokens" in e.value for e in at.error)


def test_window_result_has_line_chart(env):
    at = open_app(Spec(task="ioi", n_pairs=2, component="mlp_out", window=3).to_query())
    assert not at.exception and not at.error
    assert len(charts(at)) == 2
    assert at.selectbox(key="pb_x_view-pos")


def test_layer_by_position_uses_tokens(env):
    import json

    at = open_app(Spec(task="ioi", n_pairs=2, component="resid_pre").to_query())
    assert not at.exception
    (ch,) = charts(at)
    spec = json.loads(ch.proto.spec)
    enc = spec["layer"][0]["encoding"]["x"]
    assert enc["field"] == "pos_label"
    assert any(s.endswith(":S2") for s in enc["sort"]) and any(s.endswith(":END") for s in enc["sort"])
    assert spec["layer"][0]["encoding"]["color"]["scale"]["domainMid"] == 0


def test_run_button_computes_stores_and_shows(env, monkeypatch, tiny_llama):
    """The whole compute path with a tiny random model (allowed by name)."""
    import streamlit as st

    from patching.core.registry import REGISTRY
    from ui import runtime

    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    REGISTRY.add(tiny_llama)  # forgotten below: the next test may register other weights as tiny-llama
    try:
        spec = Spec(model="tiny-llama", task="ioi", n_pairs=2, component="attn_out")
        at = open_app(spec.to_query())
        assert at.selectbox(key="pb_w_model").value == "tiny-llama"
        assert "not stored yet" in texts(at)
        at.button(key="pb_run").click().run()
        assert not at.exception, at.exception
        assert len(charts(at)) == 2  # the heatmap and the top components' 95 % intervals
        assert "95 % bootstrap intervals" in texts(at)
        n = runtime.store().count()
        at2 = open_app(spec.to_query())  # a fresh session: read from the store
        assert "Read from the store" in texts(at2)
        assert runtime.store().count() == n
    finally:
        REGISTRY.forget("tiny-llama")
        st.cache_resource.clear()


def test_attention_pattern_button_draws_three_patterns(env, monkeypatch, tiny_llama):
    """Clean, corrupted and noised patterns of one head (a tiny model, allowed by name)."""
    import streamlit as st

    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    REGISTRY.add(tiny_llama)  # forgotten below: the next test may register other weights as tiny-llama
    try:
        at = open_app(Spec(model="tiny-llama", task="ioi", n_pairs=2, component="head").to_query())
        assert any(e.label.startswith("Attention pattern of one head") for e in at.get("expander"))
        at.number_input(key="pb_att_layer").set_value(1)
        at.number_input(key="pb_att_head").set_value(2)
        at.button(key="pb_att_go").click().run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        import json

        titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
        assert titles == [f"L1H2 \u00b7 {name}" for name in ("clean", "corrupt", "noised")], titles
    finally:
        REGISTRY.forget("tiny-llama")
        st.cache_resource.clear()


# ---------------------------------------------------------------- other pages


def test_library_lists_and_links(env):
    at = open_app(STORED.to_query())
    at.switch_page("pages/2_Library.py").run()
    assert not at.exception
    df = at.dataframe[0].value
    assert len(df) >= 3
    assert {"result", "stored (UTC)", "compute s", "open"} <= set(df.columns)
    assert all(link.startswith("./?model=") for link in df["open"])
    link = df["open"].iloc[-1]
    q = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))
    Spec.from_query(q)  # every link holds a valid spec
    assert len(at.get("page_link")) >= 3
    at.text_input(key="pb_lib_filter").input("mlp_out").run()
    assert len(at.dataframe[0].value) == 1


def test_library_empty_store(env, tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    at = open_page("pages/2_Library.py", timeout=180)
    assert not at.exception
    assert any("Nothing is stored yet" in i.value for i in at.info)


def test_how_to_read_uses_current_example(env):
    at = open_app(STORED.to_query())
    at.switch_page("pages/5_How_to_read.py").run()
    assert not at.exception
    t = texts(at)
    for word in ("denoise", "noise", "str", "gn", "logit_diff", "kl", "2-SD", "In the current example"):
        assert word in t
    assert "sufficient" in t and "necessary" in t
    assert any("pb-tok" in h.proto.body for h in at.get("html"))  # the example's tokens


def test_how_to_read_malformed_link(env):
    at = open_page("pages/5_How_to_read.py", {"metric": "nope"}, timeout=180)
    assert not at.exception
    assert any("This link has a problem" in e.value for e in at.error)


# ---------------------------------------------------------------- helpers behind the pages


def test_chart_exports_and_detection_marks():
    import pandas as pd

    from patching.analysis.detection import top_components, with_detection
    from ui import charts as ui_charts

    rows = [{"component": "head", "layer": l, "head": h, "pos": pd.NA, "pos_label": "", "logit_diff": 0.0, "prob": 0.0,
             "logprob": 0.0, "kl": 0.0} for l in range(6) for h in range(4)]
    t = pd.DataFrame(rows)
    t.loc[5, "logit_diff"], t.loc[17, "logit_diff"] = 0.9, -0.8
    d, th = with_detection(t, "logit_diff")
    assert set(d.loc[d["detected"] != "", "label"]) == {"L1H1", "L4H1"}
    assert d.loc[17, "detected"] == "negative" and th["lower"] < 0 < th["upper"]
    assert list(top_components(d, 2)["label"]) == ["L1H1", "L4H1"]
    chart = ui_charts.heatmap(d, "head", "layer", metric="logit_diff", title="t")
    spec = chart.to_dict()
    assert spec["layer"][0]["encoding"]["color"]["scale"]["domain"] == [-0.9, 0.9]
    assert spec["layer"][1]["encoding"]["stroke"]["scale"]["domain"] == ["positive", "negative"]
    assert ui_charts.to_bytes(chart, "png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in ui_charts.to_bytes(chart, "svg")[:200]


def test_pairs_text_round_trip_and_format_guess():
    from patching.core.pairs import parse_pairs_text
    from patching.analysis.formatting import guess_pairs_format, pairs_to_text

    pairs = (Pair("a b", "a c", " x", " y", key_positions=(2,)), Pair("d, e", "d, f", " z", " w"))
    text = pairs_to_text(pairs)
    assert guess_pairs_format(text) == "jsonl" and guess_pairs_format("clean,corrupt\n") == "csv"
    assert guess_pairs_format("", "x.CSV") == "csv"
    assert tuple(parse_pairs_text(text, "jsonl")) == pairs


# ---------------------------------------------------------------- hostile links (issue 14)

def _hostile_queries() -> list[dict]:
    from patching.core.codec import encode_json, encode_text

    row = {"clean": "a", "corrupt": "b", "answer": " c", "counter_answer": " d"}
    return [
        {"seed": "![t](http://host/x.png)", "task": "[Session expired, log in again](http://host/phish)"},
        {"mode": "sweep", "receivers": "0-999999999.0:q", "senders": "0-" + "9" * 5000 + ".*", "k": "9" * 5000, "top": "1e309"},
        {"pairs": encode_json([row | {"clean": "\ud800"}]), "key-positions": "Infinity"},
        {"pairs": encode_json([row] * 600), "n-pairs": "600"},
        {"mode": "hypothesis", "hypothesis": encode_text('{"paths": ' + "[" * 5000 + "]" * 5000 + "}"), "pair": "-1", "units": "<b>x</b>"},
        {"mode": "hypothesis", "hypothesis": encode_text('{"name": "![beacon](http://host/b.png)", "description": "[phish](http://host/p) <img src=x>", "paths": []}')},
    ]


def _live(text: str) -> bool:
    import re

    resolved = re.sub(r"\\(.)", r"\1", text)  # GFM autolinks bare URLs after resolving escapes
    return bool(re.search(r"[\[\]<>!`]|\$", re.sub(r"\\.", "", text)) or re.search(r"(?i)://|www\.|@\w", resolved))


@pytest.mark.parametrize("page", ["1_Patch.py", "3_Disagreement.py", "4_Paths.py", "5_How_to_read.py"])
def test_hostile_links_never_crash_or_inject(env, page):
    """Every page reads a hostile link through the guarded path: no exception
    box, a message naming the field, and no user value rendered as markdown
    (no link, no image that would fetch from outside, no HTML)."""
    for q in _hostile_queries():
        at = open_page(f"pages/{page}", q, timeout=180)
        assert not at.exception, (page, q.keys(), at.exception)
        for e in list(at.error) + list(at.warning) + list(at.info) + list(at.caption) + list(at.markdown):
            body = str(e.value)
            if "host" in body:  # a hostile value is shown: it must be inert
                assert not _live(body), (page, body)
        for x in at.expander:
            assert "](" not in str(x.label).replace("\\]\\(", ""), x.label
        if "seed" in q:  # the refusal is shown, naming the field, with the value escaped
            assert any("This link has a problem" in str(e.value) for e in at.error), page
    if page == "4_Paths.py":  # the hostile hypothesis name reached an expander label, escaped
        assert any("beacon" in str(x.label) and "\\]\\(" in str(x.label) for x in at.expander), [x.label for x in at.expander]


def test_pairs_editor_error_beside_editable_text(env):
    """Pasted pairs that do not parse (a bare carriage return, Infinity
    positions, nested JSONL, too many rows) show their error next to the text,
    which stays editable; fixing the text clears it."""
    at = open_app()
    at.radio(key="pb_w_source").set_value("pairs").run()
    bad = ['{"clean": "a", "corrupt": "b", "answer": " c", "counter_answer": " d", "key_positions": [Infinity]}',
           "clean,corrupt,answer,counter_answer\na,\"b\rc", '{"clean": ' + "[" * 100 + "]" * 100 + "}",
           "clean,corrupt,answer,counter_answer\n" + "a,b,c,d\n" * 600]
    for text in bad:
        at.text_area(key="pb_w_pairs_text").set_value(text).run()
        assert not at.exception, at.exception
        errs = [e.value for e in at.sidebar.error]
        assert any(e.startswith("pairs") for e in errs), (text[:40], errs)
        assert not at.text_area(key="pb_w_pairs_text").disabled
    at.text_area(key="pb_w_pairs_text").set_value(
        '{"clean": "When Mary and John went to the store, John gave a drink to", "corrupt": "When Mary and John went to the store, Mary gave a drink to", "answer": " Mary", "counter_answer": " John"}').run()
    assert not at.exception and not [e for e in at.sidebar.error if str(e.value).startswith("pairs")]
