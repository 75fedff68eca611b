"""The Disagreement page's answer, without a model: the settings' layout by
factor, the per-factor agreement (points and intervals recomputed naively with
scipy), the consensus cells, the grid's statistics stored and read back
exactly, refused when forged, carried in bundles, and the three sentences.
On synthetic grids with per-prompt values (tests/helpers/disagreement.py)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from patching import bundles
from patching.analysis import stats as analysis_stats
from patching.analysis import inference, uncertainty
from patching.core.spec import Spec
from patching.store import Store, table_from_parquet, table_to_parquet
from patching.studies.disagreement import answer, consensus, grid_stats, layout, stored, view
from patching.studies.disagreement import grid as disagreement_grid
from tests.helpers.disagreement import BASE, synthetic_grid

N_BOOT = 60


@pytest.fixture(scope="module")
def grid():
    return synthetic_grid(noop=(0, 5))


@pytest.fixture(scope="module")
def gstats(grid):
    return grid_stats.compute(grid, k=3, n_boot=N_BOOT)


# ================================================================ layout


@pytest.mark.parametrize("method,n,blocks,pairs", [
    ("exact", 36, 6, {"corruption": 18, "metric": 36, "direction": 18, "variant": 36}),
    ("atp", 72, 12, {"corruption": 36, "metric": 72, "direction": 36, "variant": 72, "method": 36}),
])
def test_layout_blocks_short_labels_and_factor_pairs(method, n, blocks, pairs):
    settings = disagreement_grid.page_settings(disagreement_grid.grid_base(Spec()), list(disagreement_grid.GRID_VARIANTS), method)
    lay = layout.layout(settings)
    assert len(lay) == n and sorted(lay["setting"]) == sorted(settings) and lay["block"].nunique() == blocks
    assert (lay.groupby("block").size() == 6).all() and int(lay["block_start"].sum()) == blocks
    assert not lay.duplicated(["block", "short"]).any()  # a short label names one setting inside its block
    assert lay.loc[0, "short"] == "LD · den" and lay.loc[0, "block"].startswith("s2")
    fp = layout.factor_pairs(settings)
    assert fp.groupby("factor").size().to_dict() == pairs
    for r in fp.itertuples():  # each pair differs in its factor and nothing else
        pa, pb = layout.parts(r.setting_a), layout.parts(r.setting_b)
        assert [f for f in layout.FACTORS if pa[f] != pb[f]] == [r.factor]
    assert layout.varying(["str/prob/denoise", "gn/prob/denoise"]) == ["corruption"]
    assert layout.layout(["str/prob/denoise", "gn/prob/denoise"])["block"].tolist() == ["", ""]


# ================================================================ per-factor agreement


def _measured(grid) -> np.ndarray:
    ok = np.ones(len(next(iter(grid.effects().values()))), dtype=bool)
    ok[[0, 5]] = False
    return ok


def _point(x: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    """Spearman (scipy) and top-k Jaccard by |effect| (ties by position)."""
    ta, tb = set(np.argsort(-np.abs(x), kind="stable")[:k]), set(np.argsort(-np.abs(y), kind="stable")[:k])
    return float(sps.spearmanr(x, y).statistic), len(ta & tb) / len(ta | tb)


def test_factor_points_are_means_over_pairs_on_measurement_cells(grid, gstats):
    ok = _measured(grid)
    eff = {s: e.to_numpy()[ok] for s, e in grid.effects().items()}
    fp = layout.factor_pairs(gstats.settings)
    for row in gstats.factors.itertuples():
        mine = fp[fp["factor"] == row.factor]
        vals = np.array([_point(eff[a], eff[b], 3) for a, b in zip(mine["setting_a"], mine["setting_b"])])
        assert row.n_pairs == len(mine)
        assert row.spearman == pytest.approx(vals[:, 0].mean(), abs=1e-12)
        assert row.topk_jaccard == pytest.approx(vals[:, 1].mean(), abs=1e-12)
        assert row.spearman_min == pytest.approx(vals[:, 0].min()) and row.spearman_max == pytest.approx(vals[:, 0].max())
    assert list(gstats.factors["spearman"]) == sorted(gstats.factors["spearman"])  # the choice that changes most first
    # the noop cells are not in any point statistic: the table's n counts measurement cells only
    assert (gstats.agreement["n"] == ok.sum()).all() and gstats.info["n_noop"] == 2


def test_factor_intervals_equal_a_naive_bootstrap(grid, gstats):
    """Every resample recomputed by hand (the same seeded prompt weights):
    effects, scipy's Spearman per pair, the mean over the factor's pairs,
    its expanded percentiles; and the gap to the next factor likewise."""
    ok = _measured(grid)
    w = uncertainty.weights(6, N_BOOT, 0)
    boot = {}
    for s in gstats.settings:
        r = grid.results[s]
        mats, _ = uncertainty.matrices(r.per_prompt, len(r.table))
        boot[s] = uncertainty.samples(mats, r.meta["per_prompt_ref"], grid.specs[s].metric, grid.specs[s].direction, w)[ok]
    fp = layout.factor_pairs(gstats.settings)
    means = {}
    for f in gstats.factors["factor"]:
        mine = fp[fp["factor"] == f]
        per = np.array([[sps.spearmanr(boot[a][:, b], boot[c][:, b]).statistic for b in range(N_BOOT)]
                        for a, c in zip(mine["setting_a"], mine["setting_b"])])
        means[f] = per.mean(0)
        row = gstats.factors.set_index("factor").loc[f]
        a = inference.expanded_level(6, 0.95)  # the expanded percentile interval (issue 19's choice), by hand
        assert row["spearman_lo"] == pytest.approx(np.quantile(means[f], a), abs=1e-5)
        assert row["spearman_hi"] == pytest.approx(np.quantile(means[f], 1 - a), abs=1e-5)
    first, second = gstats.factors["factor"][:2]
    top = gstats.factors.iloc[0]
    assert top["gap_lo"] == pytest.approx(np.quantile(means[second] - means[first], inference.expanded_level(6, 0.95)), abs=1e-5)
    assert top["gap_to_next"] == pytest.approx(gstats.factors.iloc[1]["spearman"] - top["spearman"])


# ================================================================ consensus


def test_consensus_cells_follow_the_2sd_rule_on_measurement_cells(grid, gstats):
    c = gstats.cells
    assert len(c) == 12 * len(gstats.settings)
    assert not c.loc[c["component"].isin(["L0H0", "L1H2"]), "measured"].any()
    assert (c.loc[~c["measured"], "detected"] == 0).all() and c.loc[~c["measured"], "stability"].isna().all()
    for s in gstats.settings[:4]:
        e = grid.effects()[s].drop(["L0H0", "L1H2"])
        z = (e - e.mean()) / e.std(ddof=0)
        mine = c[(c["setting"] == s) & c["measured"]].set_index("component")
        assert np.allclose(mine["z"].reindex(z.index), z)
        assert ((mine["detected"] != 0).reindex(z.index) == (z.abs() > 2)).all()
        assert (mine["lo"] <= mine["effect"] + 1e-9).mean() > 0.9  # the point sits inside its own interval (percentile, small n)
    comps = consensus.components(c)
    n = len(gstats.settings)
    for r in comps.itertuples():
        det = c[(c["component"] == r.component) & (c["detected"] != 0)]
        assert r.n_detected == len(det) and r.group == ("core" if len(det) / n >= consensus.CORE_SHARE else "fringe")
    assert list(comps["group"]) == sorted(comps["group"])  # core first
    m = consensus.matrix(c, top=3)
    assert m["component"].nunique() == min(3, len(comps)) and len(m) == m["component"].nunique() * n


# ================================================================ storage


def test_stored_statistics_read_back_exactly_and_follow_their_sweeps(tmp_path, grid, gstats):
    back = grid_stats.GridStats.from_table(table_from_parquet(table_to_parquet(gstats.to_table())), gstats.info, gstats.settings)
    pd.testing.assert_frame_equal(back.factors, gstats.factors)
    pd.testing.assert_frame_equal(back.cells, gstats.cells)
    pd.testing.assert_frame_equal(back.agreement[gstats.agreement.columns], gstats.agreement, check_dtype=False)
    pd.testing.assert_frame_equal(back.tests.reset_index(drop=True), gstats.tests.reset_index(drop=True), check_dtype=False)
    store = Store(tmp_path / "r.sqlite")
    keys = {s: grid.results[s].key for s in gstats.settings}
    stamps = {k: 1.5 for k in keys.values()}
    key = stored.save(store, BASE, gstats, keys, stamps, "ab" * 8)
    fp = "ab" * 8
    assert key == stored.stats_key(BASE, keys, stamps, fp, 3, N_BOOT)
    got = stored.load(store, key)
    pd.testing.assert_frame_equal(got.factors, gstats.factors)
    assert answer.sentences(got) == answer.sentences(gstats)
    # another k, resampling, sweep stamp or statistics version is another key
    others = {stored.stats_key(BASE, keys, stamps, fp, 4, N_BOOT), stored.stats_key(BASE, keys, stamps, fp, 3, 0),
              stored.stats_key(BASE, keys, {k: 2.0 for k in keys.values()}, fp, 3, N_BOOT),
              stored.stats_key(BASE, keys, stamps, fp, 3, N_BOOT, version="0"), stored.stats_key(BASE, keys, stamps, "cd" * 8, 3, N_BOOT),
              stored.stats_key(BASE.with_(n_pairs=3), keys, stamps, fp, 3, N_BOOT)}
    assert key not in others and len(others) == 6
    # sweeps without per-prompt values (attribution estimates): no intervals, and found again under the key asked for
    bare = synthetic_grid(noop=(0, 5))
    for s in bare.available:
        bare.results[s] = replace(bare.results[s], per_prompt=None)
    plain = grid_stats.compute(bare, k=3, n_boot=N_BOOT)
    assert not plain.has_intervals and plain.info["n_boot"] == N_BOOT
    key2 = stored.save(store, BASE, plain, keys, {k: 3.0 for k in keys.values()}, "ab" * 8)
    assert key2 == stored.stats_key(BASE, keys, {k: 3.0 for k in keys.values()}, fp, 3, N_BOOT) and not stored.load(store, key2).has_intervals
    # a row whose meta does not give its key, or of another kind, is never read
    rec = store.get(key)
    rec["meta"]["info"]["k"] = 4
    store.put("f" * 64, stored.KIND, rec["spec"] and json.dumps(rec["spec"]), "x", "smollm2-135m", "ab" * 8, "1", 0.0, {}, rec["meta"], rec["table"])
    assert stored.load(store, "f" * 64) is None and stored.load(store, grid.results[gstats.settings[0]].key) is None


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.assign(extra=1.0), "columns must be exactly"),
    (lambda t: t.assign(part=t["part"].replace("cell", "cellz")), "part 'cellz'"),
    (lambda t: t.assign(stat=t["stat"].replace("spearman", "pvalue")), "statistic 'pvalue'"),
    (lambda t: t.assign(a=t["a"].replace("str/prob/denoise/s2", "str/prob/denoise/s9")), "not in meta.settings"),
    (lambda t: t.assign(component=t["component"].replace("L1H1", "[x](http://evil)")), "component label"),
    (lambda t: t.assign(value=t["value"].where(t.index != 3, np.inf)), "infinite"),
])
def test_a_forged_statistics_table_is_refused(gstats, edit, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        stored.check_table(edit(gstats.to_table()), gstats.settings)


def _bundle_with(store: Store, keys: list[str], edit=None) -> bytes:
    data = bundles.bundle_bytes(store, keys)
    if edit is None:
        return data
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            zf.writestr(name, edit(name, src.read(name)))
    return out.getvalue()


def test_statistics_travel_in_bundles_and_forged_ones_are_refused(tmp_path, grid, gstats):
    store = Store(tmp_path / "a.sqlite")
    keys = {s: grid.results[s].key for s in gstats.settings}
    key = stored.save(store, BASE, gstats, keys, {k: 7.25 for k in keys.values()}, "ab" * 8)
    dst = Store(tmp_path / "b.sqlite")
    rep = bundles.import_bundle(dst, _bundle_with(store, [key]), allow_other_weights=True)
    assert rep.kinds == {"grid_stats": 1}
    pd.testing.assert_frame_equal(stored.load(dst, key).cells, gstats.cells)

    def meta_k(name, raw):
        if name == "results/0.json":
            row = json.loads(raw)
            meta = json.loads(row["meta_json"])
            meta["info"]["k"] = 4
            row["meta_json"] = json.dumps(meta)
            return json.dumps(row)
        return raw

    def table_col(name, raw):
        if name == "results/0.parquet":
            return table_to_parquet(table_from_parquet(raw).rename(columns={"value": "v"}))
        return raw

    def table_stat(name, raw):  # within the schema's choices, but not a statistic of its part
        if name == "results/0.parquet":
            t = table_from_parquet(raw)
            return table_to_parquet(t.assign(stat=t["stat"].where(~((t["part"] == "factor") & (t["stat"] == "spearman")), "effect")))
        return raw

    def settings_markup(name, raw):
        if name == "results/0.json":
            row = json.loads(raw)
            meta = json.loads(row["meta_json"])
            meta["settings"][0] = "str/prob/**bold**"
            row["meta_json"] = json.dumps(meta)
            return json.dumps(row)
        return raw

    for edit, needle in ((meta_k, "key does not match"), (table_col, "not this kind's table"), (settings_markup, "meta.settings"),
                         (table_stat, "statistic 'effect' is not one of part 'factor'")):
        with pytest.raises(Exception) as e:
            bundles.import_bundle(Store(tmp_path / f"{edit.__name__}.sqlite"), _bundle_with(store, [key], edit), allow_other_weights=True)
        assert needle in str(e.value) and "bundle" in str(e.value)


# ================================================================ the sentences


def test_at_most_three_sentences_naming_at_most_five_components_with_their_numbers(gstats):
    lines = answer.sentences(gstats)
    assert 1 <= len(lines) <= 3
    for line in lines:
        assert len(set(re.findall(r"\bL\d+H\d+\b", line))) <= answer.MAX_NAMED
        assert not any(s in line for s in gstats.settings)  # settings live in the tables, not in sentences
    top = gstats.factors.iloc[0]
    assert lines[0].startswith(f"**The {layout.FACTORS[top['factor']]} changes the ranking most**")
    assert f"ρ = {answer.fmt(top['spearman'])}" in lines[0] and answer.span(top["spearman_lo"], top["spearman_hi"]) in lines[0]
    assert ("which includes 0" in lines[0]) == (top["gap_lo"] <= 0)
    core = consensus.components(gstats.cells).query("group == 'core'")
    assert (f"**{len(core)} " in lines[1]) if len(core) else ("No head is detected" in lines[1])
    more = answer.test_lines(gstats)  # compare --summary: the tests counted, and why nothing is labelled with 6 prompts
    assert more[0].startswith("0 of ") and "family of" in more[0] and any("too optimistic" in x for x in more)
    no_iv = grid_stats.compute(synthetic_grid(noop=(0, 5)), k=3, n_boot=0)
    assert not no_iv.has_intervals and "no intervals" in answer.sentences(no_iv)[0]
    assert view.disagreements(no_iv, "sign flip").empty and view.disagreement_counts(no_iv)["sign flip"] == (0, 0, 0)


def test_views_are_selections_of_the_stored_numbers(gstats):
    m = view.matrix(gstats, "spearman")
    n = len(gstats.settings)
    assert len(m) == n * n and (m[m.setting_a == m.setting_b]["value"] == 1).all()
    row = gstats.agreement.iloc[0]
    back = m[(m.setting_a == row.setting_b) & (m.setting_b == row.setting_a)].iloc[0]
    assert back["value"] == row["spearman"] and back["floor_a"] == row["floor_b"]
    d = view.component_detail(gstats, "L2H1")
    assert len(d) == n and set(d["panel"]) == {"logit_diff", "prob", "kl"} and d["x"].nunique() == n // 3
    assert analysis_stats.parse_setting(view.factor_pairs(gstats).iloc[0]["setting_a"]) is not None
    counts = view.disagreement_counts(gstats)
    t = gstats.tests
    assert counts["sign flip"] == (int((t["significant"] & (t["kind"] == "sign flip")).sum()), int((t["disagreement"] & (t["kind"] == "sign flip")).sum()),
                                   int((t["kind"] == "sign flip").sum()))
    assert not t["significant"].any()  # 6 prompts: too few for a label (issue 19)
    shown = view.disagreements(gstats, "detected/missed")
    assert len(shown) == counts["detected/missed"][1] and list(shown.columns)[-3:] == ["p", "q", "significant at FDR 0.05"]


def test_import_verify_recomputes_statistics_from_their_sweeps(tmp_path, grid, gstats):
    """``import --verify``: a grid's statistics are computed again from their
    sweeps (no model) and a bundle whose numbers were edited is refused."""
    from patching.core.errors import PatchboardError
    from patching.core.spec import ENGINE_VERSION

    store = Store(tmp_path / "v.sqlite")
    keys = {}
    for s in gstats.settings:  # the sweeps, stored under their (synthetic) keys
        r = grid.results[s]
        if r.key not in keys.values():
            store.put(r.key, "activation", r.spec.to_json(), "sweep", r.spec.model, "ab" * 8, ENGINE_VERSION, 0.0, r.baselines, r.meta,
                      r.table, r.per_prompt)
        keys[s] = r.key
    key = stored.save(store, BASE, gstats, keys, store.stamps(list(set(keys.values()))), "ab" * 8)
    recompute = lambda row: stored.recompute_row(row, [], store)  # noqa: E731
    assert bundles.verify_rows(bundles.read_bundle(bundles.bundle_bytes(store, [key])), 1, recompute=recompute) == [key]

    def edited(name, raw):
        if name == "results/0.parquet":
            t = table_from_parquet(raw)
            hit = (t["part"] == "factor") & (t["stat"] == "spearman")
            return table_to_parquet(t.assign(value=t["value"].where(~hit, 0.99)))
        return raw

    with pytest.raises(PatchboardError, match="differs from its recomputation"):
        bundles.verify_rows(bundles.read_bundle(_bundle_with(store, [key], edited)), 1, recompute=recompute)
    with pytest.raises(PatchboardError, match="neither in the bundle nor stored here"):
        stored.recompute_row(bundles.read_bundle(bundles.bundle_bytes(store, [key])).rows[0], [], Store(tmp_path / "empty.sqlite"))
