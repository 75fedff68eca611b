"""The error of an approximation in plain view (AppTest, tiny random model):
the Patch page's agreement with the stored exact sweep and its "Compute
exact for comparison" button; the Paths page's method selector (EAP beside
the exact sweep)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from patching.core.spec import Spec
from tests.helpers.apptest import charts, open_page


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.info] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def _all_protos(at: AppTest) -> str:
    out, todo = [], [at._tree]
    while todo:
        node = todo.pop()
        out.append(str(getattr(node, "proto", "")))
        todo.extend(getattr(node, "children", {}).values())
    return "\n".join(out)


def test_patch_page_shows_the_error_of_atp_against_exact(env, tiny_llama):
    from patching import service
    from ui import runtime

    spec = Spec(model="tiny-llama", task="ioi", n_pairs=2, component="head", method="atp")
    service.run(spec, store=runtime.store(), lm=tiny_llama)
    at = open_page("app.py", spec.to_query())
    assert not at.exception, at.exception
    assert "Compute exact for comparison" in {b.label for b in at.button}
    assert not any(m.label == "Pearson" for m in at.metric)
    n = runtime.store().count()
    at.button(key="pb_agree_exact").click().run()
    assert not at.exception, at.exception
    assert runtime.store().count() == n + 1  # the exact sweep, stored
    assert service.lookup(spec.with_(method="exact"), runtime.store(), tiny_llama.fingerprint) is not None
    labels = [m.label for m in at.metric]
    assert {"Pearson", "Spearman", "Top-10 overlap", "Largest |error|"} <= set(labels)
    # The numbers are the library's, from the two stored tables.
    from patching.analysis.estimate_error import agreement

    ex = service.lookup(spec.with_(method="exact"), runtime.store(), tiny_llama.fingerprint)
    ap = service.lookup(spec, runtime.store(), tiny_llama.fingerprint)
    a = agreement(ap.table, ex.table, "logit_diff")
    assert next(m.value for m in at.metric if m.label == "Pearson") == f"{a['pearson']:.3g}"
    scatter = [c for c in charts(at) if "against exact" in str(c.spec)]
    assert len(scatter) == 1
    assert "largest absolute errors" in "".join(h.proto.body for h in at.get("html")) + _texts(at)
    # A fresh session reads both from the store: no button any more.
    at2 = open_page("app.py", spec.to_query())
    assert "Compute exact for comparison" not in {b.label for b in at2.button}
    assert any(m.label == "Pearson" for m in at2.metric)
    # An exact result shows no agreement section.
    at3 = open_page("app.py", spec.with_(method="exact").to_query())
    assert not any(m.label == "Pearson" for m in at3.metric)


def test_paths_page_method_selector_runs_eap_and_compares(env, tiny_llama):
    from patching import service
    from ui import runtime

    spec = Spec(model="tiny-llama", task="ioi", n_pairs=2)
    q = spec.to_query() | {"mode": "sweep", "receivers": "2.*:*,logits"}
    service.run(service.PathSweep(spec, "2.*:*,logits"), store=runtime.store(), lm=tiny_llama)  # the exact sweep
    at = open_page("pages/4_Paths.py", q)
    assert not at.exception, at.exception
    assert at.radio(key="pb_x_method").value == "exact"
    assert not any(m.label == "Pearson" for m in at.metric)
    at.radio(key="pb_x_method").set_value("eap").run()
    v = at.query_params["method"]
    assert (v[-1] if isinstance(v, list) else v) == "eap"
    assert "one forward and one backward pass" in _texts(at)
    at.button(key="pb_paths_run").click().run()
    assert not at.exception, at.exception
    assert any("EAP at the corrupted run" in str(c.spec) for c in charts(at))  # the default direction's variant, named
    assert {"Pearson", "Spearman"} <= {m.label for m in at.metric}  # beside the stored exact sweep
    assert "--method eap --out" in _all_protos(at)  # the command line reproduces the estimate
    # EAP-IG: its steps travel in the link; the Wang form refuses an estimate.
    at.radio(key="pb_x_method").set_value("eap_ig").run()
    assert at.number_input(key="pb_x_ig-steps").value == 5
    at.radio(key="pb_x_form").set_value("wang").run()
    assert not at.exception
    assert any("estimates the direct form" in e.value for e in at.error), [e.value for e in at.error]
