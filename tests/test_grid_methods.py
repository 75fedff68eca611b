"""``method`` as a dimension of the disagreement grid: ``setting@atp`` beside
the exact setting, read like any other setting; the default grid (its
settings, sweeps and keys) unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from patching.analysis import stats as S
from patching.core.errors import PatchboardError
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.studies.disagreement import tables as A
from patching.studies.disagreement import grid as C
from patching.studies.disagreement import text as CT

BASE = Spec(model="smollm2-135m", task="ioi", n_pairs=2, seed=0, component="head", noise_samples=2)
FACTS = Spec(task="facts", component="head")


def test_default_grid_and_its_keys_are_unchanged():
    specs = C.grid_specs(BASE)
    assert len(specs) == 36 and all("@" not in s for s in specs) and all(sp.method == "exact" for sp in specs.values())
    for s, sp in specs.items():
        p = S.parse_setting(s)
        old = replace(BASE, corruption=p["corruption"], metric=p["metric"], direction=p["direction"], ioi_corrupt=p["variant"]).validated()
        assert sp.cache_key("fp") == old.cache_key("fp")
    # A base spec's own method does not leak into the grid: settings say it.
    assert all(sp.method == "exact" for sp in C.grid_specs(BASE.with_(method="atp")).values())
    assert "--method" not in CT.cli_command(BASE, C.default_settings(BASE))


def test_method_suffix_parses_and_computes_its_own_sweep():
    got = C.parse_settings("str/logit_diff/denoise@atp, str/logit_diff/denoise@exact, gn/kl/noise@ig", FACTS)
    assert got == ["str/logit_diff/denoise@atp", "str/logit_diff/denoise", "gn/kl/noise@ig"]
    specs = C.grid_specs(FACTS, got)
    assert specs["str/logit_diff/denoise@atp"].method == "atp" and specs["gn/kl/noise@ig"].ig_steps == 5
    assert len(C.sweeps_of(specs)) == 3  # the estimate is a sweep of its own
    assert C.parse_settings("*/prob/denoise@atp_star", FACTS) == ["str/prob/denoise@atp_star", "gn/prob/denoise@atp_star"]
    assert S.parse_setting("str/kl/noise/s2@atp") == {"corruption": "str", "metric": "kl", "direction": "noise", "variant": "s2", "method": "atp"}
    assert S._differs_in("str/kl/noise@atp", "str/kl/noise") == "method"
    assert S._differs_in("str/kl/noise@atp", "gn/kl/noise") == "corruption,method"


@pytest.mark.parametrize("text, field", [("str/kl/noise@eap", "settings"), ("str/kl/noise@", "settings")])
def test_bad_methods_name_the_field(text, field):
    with pytest.raises(PatchboardError) as e:
        C.parse_settings(text, FACTS)
    assert e.value.field == field


def test_with_method_and_the_cli_line():
    plain = C.default_settings(FACTS)
    both = C.with_method(plain, "atp")
    assert len(both) == 24 and both[:2] == [plain[0], plain[0] + "@atp"]
    assert C.with_method(plain, "exact") == plain
    cmd = CT.cli_command(FACTS, both)
    assert "--method atp" in cmd and "--settings" not in cmd
    two = ["str/logit_diff/denoise", "str/logit_diff/denoise@ig"]
    assert "--method ig" in CT.cli_command(FACTS, two) and "--settings str/logit_diff/denoise " in CT.cli_command(FACTS, two)


def test_a_grid_with_atp_beside_exact(tiny_llama, tmp_path):
    """Computed through the service and the store like any grid; the method
    pair's statistics are those of the two stored tables."""
    from scipy.stats import spearmanr

    from patching.store import Store

    pairs = (Pair("When Mary and John went to the store, John gave a drink to", "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
             Pair("When Anna and Peter went to the park, Peter gave a book to", "When Anna and Peter went to the park, Anna gave a book to", " Anna", " Peter"))
    base = Spec(model=tiny_llama.name, task=None, pairs=pairs, component="head")
    settings = C.with_method(["str/logit_diff/denoise"], "atp")
    store = Store(tmp_path / "r.sqlite")
    grid = C.load_or_compute_grid(base, store, tiny_llama, settings=settings)
    assert grid.complete and grid.computed == 2
    assert grid.results["str/logit_diff/denoise@atp"].meta["method"] == "atp"
    eff = grid.effects()
    long = A.agreement(eff, 5)
    row = long.iloc[0]
    assert row["differs_in"] == "method"
    x, y = eff["str/logit_diff/denoise"], eff["str/logit_diff/denoise@atp"]
    assert np.isclose(row["spearman"], spearmanr(x, y[x.index])[0])
    assert "method" in grid.status_table().columns
    again = C.load_or_compute_grid(base, store, tiny_llama, settings=settings)
    assert again.computed == 0  # both read from the store
    CT.summary(grid, 5)  # the plain-language summary reads method pairs too


@pytest.mark.app
def test_disagreement_page_adds_the_estimates_and_compares_them(tiny_llama, tmp_path, monkeypatch):
    """AppTest: 'Also estimate with: atp' doubles the grid (in the link),
    the button computes exact and atp sweeps, the scatter defaults to
    exact vs its estimate, and the agreement table names the method."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATCHBOARD_ALLOWED_MODELS", "tiny-llama")
    REGISTRY.add(tiny_llama)
    try:
        q = Spec(model="tiny-llama", task="facts", n_pairs=2, component="head").to_query() | {"noise-samples": "2", "grid-method": "atp"}
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "3_Disagreement.py"), default_timeout=300)
        for k, v in q.items():
            at.query_params[k] = v
        at.run()
        assert not at.exception, at.exception
        assert at.selectbox(key="pb_x_grid-method").value == "atp"
        assert any("0 of 8 sweeps are stored" in i.value for i in at.info)  # 4 exact + 4 atp
        next(b for b in at.button if b.label.startswith("Compute")).click().run()
        assert not at.exception, at.exception
        assert at.selectbox(key="pb_x_a").value == "str/logit_diff/denoise"
        assert at.selectbox(key="pb_x_b").value == "str/logit_diff/denoise@atp"
        table = next(d.value for d in at.dataframe if "topk_jaccard" in d.value.columns)
        assert len(table) == 24 * 23 // 2 and (table["differs_in"] == "method").sum() == 12
        v = at.query_params["grid-method"]
        assert (v[-1] if isinstance(v, list) else v) == "atp"
    finally:
        REGISTRY.evict("tiny-llama")
        st.cache_resource.clear()
