"""The Paths page (pages/4_Paths.py) under AppTest with a tiny random model:
the whole compute path (sweep, hypothesis, attribution, links) and bad input
(the page in a real browser: tests/browser/test_paths_page.py)."""

from __future__ import annotations

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from patching.core import codec
from patching.core.spec import Spec
from tests.helpers import ROOT, apptest
from tests.helpers.apptest import charts, qp, texts

PAGE = str(ROOT / "pages" / "4_Paths.py")
ALL_PATHS = {"name": "all paths", "paths": [{"sender": "*", "receiver": "*"}]}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    # test_paths.py's tiny Llama: HF's default init, scaled by 4
    return tiny_model("llama", max_position_embeddings=64, initializer_range=0.02, scale=4.0)


@pytest.fixture
def env_model(tiny):
    """``env`` (tests/app/conftest.py) registers this module's tiny Llama."""
    return tiny


SPEC = Spec(model="tiny-llama", task="ioi", n_pairs=2, seed=0)


def open_page(query: dict) -> AppTest:
    """The Paths page opened on a link with ``query``."""
    return apptest.open_page(PAGE, query)


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


def test_hypothesis_shows_its_baselines_at_the_same_number_of_paths(env):
    """Beside the proportion explained: the same paths with no heads and 20
    random head sets of the same size, computed by one button and equal to
    the library's summary of the same stored evaluations."""
    from patching.studies import baselines

    hyp = {"name": "two heads", "paths": [{"sender": ["embed", "mlp*", "0.1", "1.2"], "receiver": ["0.1:*", "1.2:*", "mlp*", "logits"]}]}
    at = open_page(SPEC.to_query() | {"mode": "hypothesis", "hypothesis": codec.encode_hypothesis(json.dumps(hyp))})
    at.button(key="pb_hyp_run").click().run()
    assert not at.exception, at.exception
    assert "random head sets of the same size" in texts(at)
    at.button(key="pb_hyp_baselines_show").click().run()  # asked for: parsed and looked up from now on
    assert "evaluations are not stored yet" in texts(at)
    at.button(key="pb_hyp_baselines").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    from patching import service
    from patching.methods.graph import Geometry

    geo = Geometry.of(service.get_model(SPEC.model))
    rows = [service.lookup(service.HypothesisEval(SPEC, h)) for _, h in [("hypothesis", hyp)] + baselines.baseline_hypotheses(hyp, geo.n_layers, geo.n_heads)]
    assert all(r is not None for r in rows) and len(rows) == 2 + baselines.N_RANDOM
    no_heads = rows[1].row("kl")["proportion_explained"]
    assert metrics["No heads"] == f"{no_heads * 100:.1f} %"
    assert f"Random head sets ({baselines.N_RANDOM})" in metrics


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


def test_tl_direct_form_draws_one_receiver_at_a_time_and_the_ig_rule_is_in_the_link(env):
    """form tl_direct (TransformerLens's get_act_patch_direct_path): a row per
    sender → receiver, drawn one receiver at a time; EAP-IG's rule is a
    widget and a link parameter."""
    q = SPEC.to_query() | {"mode": "sweep", "receivers": "2.1:q,2.3:q", "senders": "1.*", "form": "tl_direct"}
    at = open_page(q)
    assert not at.exception, at.exception
    at.button(key="pb_paths_run").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="pb_paths_receiver").options == ["2.1:q", "2.3:q"] and len(charts(at)) == 1
    at.selectbox(key="pb_paths_receiver").select("2.3:q").run()
    assert not at.exception and len(charts(at)) == 1
    assert qp(at)["form"] == "tl_direct"
    at2 = open_page(SPEC.to_query() | {"mode": "sweep", "receivers": "logits", "method": "eap_ig", "ig-rule": "midpoint"})
    assert not at2.exception, at2.exception
    assert at2.selectbox(key="pb_x_ig-rule").value == "midpoint" and qp(at2)["ig-rule"] == "midpoint"
