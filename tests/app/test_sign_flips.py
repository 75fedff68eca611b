"""Attribution where it fails (ui/estimate_error.py): beside an estimate
whose exact twin is stored, the Patch page names the positions and layers
where the estimate has the opposite sign to exact, with a layer × position map.

The exact sweep is computed on the tiny Gemma 3; its estimate is the exact
table with one strong cell's sign reversed (stored under the estimate's key),
so the page must name exactly that cell."""

from __future__ import annotations

from dataclasses import replace

from patching.core.spec import Spec
from tests.helpers import registered
from tests.helpers.apptest import charts, open_page


def test_patch_page_flags_the_cell_whose_sign_is_wrong(tmp_path, monkeypatch, tiny_gemma3):
    from patching import service
    from patching.analysis.measurement import measured
    from patching.store import Store

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-gemma3")
    spec = Spec(model="tiny-gemma3", task="ioi", n_pairs=2, component="resid_pre")
    with registered(tiny_gemma3):
        ex = service.run(spec, Store(), lm=tiny_gemma3)
        t = ex.table.copy()
        ok = measured(t, "logit_diff")
        i = t[ok & (t["layer"] == 1)]["logit_diff"].abs().idxmax()
        t.loc[i, [m for m in ("logit_diff", "prob", "logprob", "kl")]] *= -1.0
        est_spec = spec.with_(method="atp").validated()
        est = replace(ex, spec=est_spec, table=t, per_prompt=None)
        service.finish(service.Activation(est_spec), est, tiny_gemma3.fingerprint, Store())
        at = open_page("app.py", est_spec.to_query(), timeout=180)
    assert not at.exception
    warn = [w.value for w in at.warning if "opposite sign" in w.value]
    assert len(warn) == 1
    label = str(t.loc[i, "pos_label"]).strip()
    assert f"in 1 of {len(t)} cells" in warn[0] and f"at {label} (layer 1;" in warn[0]
    specs = [str(getattr(getattr(c, "proto", None), "spec", "")) for c in charts(at)]
    assert any("Where the estimate points the wrong way" in s for s in specs), "the layer × position map"
