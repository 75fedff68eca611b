"""The disagreement grid (patching/studies/disagreement/grid.py) on a store filled
with synthetic sweeps (no model): settings parsing, caching (stored sweeps are
never recomputed), the aggregated progress, and the tables. The real grid on
the embedded model: tests/integration/test_disagreement.py; the page:
tests/app/ and tests/browser/test_disagreement_page.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from patching.studies.disagreement import tables
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text as disagreement_text
from patching.core.errors import PatchboardError
from patching.core.spec import ENGINE_VERSION, Spec
from patching.store import Store
from tests.helpers.disagreement import AGREEMENT_COLUMNS, BASE, S2, check_against_scipy


# ================================================================ settings (no model)


def test_full_grid_sizes():
    assert len(disagreement_grid.default_settings(BASE)) == 36
    assert len(disagreement_grid.sweeps_of(disagreement_grid.grid_specs(BASE))) == 12
    facts = Spec(task="facts", component="head")
    assert len(disagreement_grid.grid_specs(facts)) == 12 and len(disagreement_grid.sweeps_of(disagreement_grid.grid_specs(facts))) == 4
    assert all(len(s.split("/")) == 3 for s in disagreement_grid.grid_specs(facts))


def test_metric_is_not_part_of_a_sweep():
    specs = disagreement_grid.grid_specs(BASE, S2)
    assert len(specs) == 12
    groups = disagreement_grid.sweeps_of(specs)
    assert len(groups) == 4
    for sets in groups.values():
        assert sorted(s.split("/")[1] for s in sets) == ["kl", "logit_diff", "prob"]
        keys = {specs[s].cache_key("fp") for s in sets}
        assert len(keys) == 1


def test_noise_settings_reach_gn_cells_only():
    specs = disagreement_grid.grid_specs(Spec(task="ioi", n_pairs=2, noise_samples=3, noise_scale=2.0), S2)
    for s, sp in specs.items():
        if s.startswith("gn/"):
            assert (sp.noise_samples, sp.noise_scale) == (3, 2.0)
        else:  # str: canonical defaults, so the cache key does not depend on them
            assert (sp.noise_samples, sp.noise_scale) == (10, 3.0)


def test_parse_settings_wildcards_and_defaults():
    assert disagreement_grid.parse_settings("str/logit_diff/denoise, gn/prob/noise", BASE) == ["str/logit_diff/denoise/s2", "gn/prob/noise/s2"]
    assert disagreement_grid.parse_settings("str/*/denoise/abc", BASE) == [f"str/{m}/denoise/abc" for m in ("logit_diff", "prob", "kl")]
    assert disagreement_grid.parse_settings(["STR/prob/noise", "str/prob/noise/s2"], BASE) == ["str/prob/noise/s2"]
    assert disagreement_grid.parse_settings("str/logit_diff/denoise", Spec(task="facts")) == ["str/logit_diff/denoise"]
    assert disagreement_grid.parse_settings("str/logit_diff/denoise", replace_variant(BASE, "abc")) == ["str/logit_diff/denoise/abc"]
    assert disagreement_grid.parse_settings(None, BASE) == disagreement_grid.parse_settings("", BASE) == disagreement_grid.default_settings(BASE)


def replace_variant(spec: Spec, v: str) -> Spec:
    from dataclasses import replace

    return replace(spec, ioi_corrupt=v)


@pytest.mark.parametrize("text,needle", [
    ("str/bogus/denoise", "metric 'bogus'"),
    ("xyz/prob/denoise", "corruption 'xyz'"),
    ("str/prob/sideways", "direction 'sideways'"),
    ("str/prob/noise/s3", "ioi_corrupt 's3'"),
    ("str/prob", "is not corruption/metric/direction"),
])
def test_parse_settings_errors_name_the_field(text, needle):
    with pytest.raises(PatchboardError) as e:
        disagreement_grid.parse_settings(text, BASE)
    assert e.value.field == "settings" and needle in str(e.value) and "\n" not in str(e.value)


def test_fourth_part_only_for_ioi():
    with pytest.raises(PatchboardError, match="ioi task only"):
        disagreement_grid.parse_settings("str/prob/noise/s2", Spec(task="facts"))


def test_cli_command_round_trips_the_settings():
    assert "--settings" not in disagreement_text.cli_command(BASE, disagreement_grid.default_settings(BASE))
    cmd = disagreement_text.cli_command(BASE, disagreement_grid.default_settings(BASE, ["s2", "abc"]), 7)
    assert "--settings '*/*/*/s2,*/*/*/abc'" in cmd and "--k 7" in cmd and "--noise-samples 2" in cmd
    assert disagreement_grid.parse_settings("*/*/*/s2,*/*/*/abc", BASE) == disagreement_grid.default_settings(BASE, ["s2", "abc"])


# ================================================================ synthetic store (no model)


def fake_table(seed: int, n_layers=4, n_heads=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for l in range(n_layers):
        for h in range(n_heads):
            v = rng.normal(0, 0.05)
            rows.append({"component": "head", "layer": l, "head": h, "pos": None, "pos_label": "",
                         "logit_diff": v, "prob": 0.1 * v + rng.normal(0, 0.001), "logprob": v, "kl": abs(v) + rng.normal(0, 0.01)})
    t = pd.DataFrame(rows)
    t.loc[5, ["logit_diff", "prob", "kl"]] = [0.9, 0.05, 0.7]  # a clear head everywhere
    for c in ("head", "pos"):
        t[c] = t[c].astype("Int64")
    return t


def put_sweep(store: Store, spec: Spec, fp: str, seed: int, corrupt_prob: float = 0.01) -> None:
    base = {"clean_logit_diff": 2.0, "corrupt_logit_diff": -1.0, "clean_prob": 0.3, "corrupt_prob": corrupt_prob,
            "clean_logprob": -1.2, "corrupt_logprob": -4.6, "corrupt_kl": 1.1, "clean_accuracy": 1.0}
    store.put(spec.cache_key(fp), "activation", spec.to_json(), spec.label(), spec.model, fp, ENGINE_VERSION, 0.5, base,
              {"compute_seconds": 0.5}, fake_table(seed))


def fill(store: Store, base: Spec, settings, fp="fp-test", skip=()):
    specs = disagreement_grid.grid_specs(base, settings)
    for i, sets in enumerate(disagreement_grid.sweeps_of(specs).values()):
        if i in skip:
            continue
        put_sweep(store, specs[sets[0]], fp, seed=i, corrupt_prob=0.01 * (i + 1))
    return specs


def test_lookup_grid_reads_only_what_is_stored(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    fill(store, BASE, S2, skip=(1,))
    grid = disagreement_grid.lookup_grid(BASE, store, "fp-test", S2)
    assert len(grid.settings) == 12 and len(grid.available) == 9 and len(grid.missing) == 3
    assert grid.n_sweeps == 4 and grid.n_missing_sweeps == 1 and not grid.complete
    # Other fingerprints (other weights) see nothing.
    assert disagreement_grid.lookup_grid(BASE, store, "other", S2).available == []
    # Each setting reads its own metric from the shared table.
    eff = grid.effects()
    s = grid.available[0]
    col = s.split("/")[1]
    assert np.allclose(eff[s].to_numpy(), grid.results[s].table[col].to_numpy())


def test_stored_sweeps_are_not_recomputed_and_progress_is_one_bar(tmp_path, monkeypatch):
    from patching import service

    store = Store(tmp_path / "r.sqlite")
    specs = fill(store, BASE, S2, skip=(1, 3))  # sweeps 1 and 3 missing: str/noise and gn/noise
    calls, progress = [], []

    def fake_run(spec, store=None, progress=None, lm=None, use_store=True):
        hit = service.lookup(spec, store, lm.fingerprint)
        assert hit is None, "run() must only be called for sweeps that are not stored"
        calls.append(spec)
        for d in (1, 2, 3):
            progress(d, 3)
        put_sweep(store, spec, lm.fingerprint, seed=100 + len(calls))
        return service.lookup(spec, store, lm.fingerprint)

    monkeypatch.setattr(service, "run", fake_run)
    lm = SimpleNamespace(fingerprint="fp-test")
    grid = disagreement_grid.load_or_compute_grid(BASE, store, lm, progress=lambda d, t: progress.append((d, t)), settings=S2)
    assert grid.complete and grid.computed == 0  # fake_run returns from_store results
    assert [(s.corruption, s.direction) for s in calls] == [("str", "noise"), ("gn", "noise")]
    # One bar for the grid: same total throughout, monotone, ends full; a gn
    # sweep (2 rows x 2 noise samples) weighs twice a str sweep (2 rows).
    totals = {t for _, t in progress}
    assert totals == {2 + 4}
    done = [d for d, _ in progress]
    assert done[0] == 0 and done[-1] == 6 and done == sorted(done)
    # Everything stored now: nothing is called again.
    calls.clear()
    disagreement_grid.load_or_compute_grid(BASE, store, lm, settings=S2)
    assert calls == []
    assert len(specs) == 12


def test_tables_from_synthetic_store(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    fill(store, BASE, S2)
    grid = disagreement_grid.lookup_grid(BASE, store, "fp-test", S2)
    eff = grid.effects()
    long = tables.agreement(grid, k=3)
    assert list(long.columns[:6]) == AGREEMENT_COLUMNS and (long["k"] == 3).all()
    check_against_scipy(long, eff, 3)
    mats = tables.matrices(long, grid.settings)
    for stat, m in mats.items():
        assert list(m.index) == grid.settings and np.allclose(m.to_numpy(), m.to_numpy().T, equal_nan=True)
    row = long.iloc[4]
    assert mats["kendall"].loc[row["setting_b"], row["setting_a"]] == row["kendall"]
    # detection sets = the 2-SD rule recomputed with numpy
    ds = tables.detection_sets(grid).set_index("setting")
    for s, v in eff.items():
        z = (v - v.mean()) / v.std(ddof=0)
        want = set(v.index[np.abs(z) > 2])
        got = {c for c in (ds.at[s, "positive"] + ", " + ds.at[s, "negative"]).split(", ") if c}
        assert got == want and ds.at[s, "n_detected"] == len(want)
    # scatter
    a, b = grid.settings[0], grid.settings[7]
    sc = tables.scatter_data(grid, a, b).set_index("component")
    assert np.allclose(sc["a"], eff[a][sc.index]) and np.allclose(sc["b"], eff[b][sc.index])
    with pytest.raises(PatchboardError, match="not an available setting"):
        tables.scatter_data(grid, a, "str/prob/noise/abc")
    # rank chart: ranks by |effect| under each setting
    rk = tables.rank_data(grid, top=4, reference=a)
    assert set(rk["component"]) == set(eff[a].abs().sort_values(ascending=False).index[:4])
    for _, r in rk.iterrows():
        assert r["rank"] == int((eff[r["setting"]].abs() > abs(r["effect"])).sum()) + 1
    # effects export
    et = tables.effects_table(grid).set_index("component")
    assert list(et.columns) == grid.settings and np.allclose(et[a], eff[a][et.index])
    # mechanisms quote the stored baselines
    mech = " ".join(m["text"] for m in disagreement_text.mechanisms(grid))
    for sets in disagreement_grid.sweeps_of(grid.specs).values():
        b0 = grid.results[sets[0]].baselines
        if grid.specs[sets[0]].direction == "denoise":
            assert f"P_corrupt(answer) = {b0['corrupt_prob']:.3g}" in mech


def test_k_must_be_positive():
    with pytest.raises(PatchboardError) as e:
        tables.agreement({"a/b/c": pd.Series([1.0, 2.0], index=["x", "y"]), "a/b/d": pd.Series([1.0, 3.0], index=["x", "y"])}, 0)
    assert e.value.field == "k"
