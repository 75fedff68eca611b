"""Robust disagreement: bootstrap intervals of the grid's statistics, the
split-half noise floor and robust labels, each recomputed independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from patching import service
from patching.analysis import stats
from patching.analysis import uncertainty
from patching.core.pairs import Pair
from patching.core.spec import Spec
from patching.store import Store
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import robust

pytestmark = pytest.mark.engine

NAMES = [("Mary", "John"), ("Anna", "Peter"), ("Lucy", "Mark"), ("Sara", "Tom"), ("Emma", "Paul"), ("Kate", "Jack")]
PAIRS = tuple(Pair(f"When {a} and {b} went to the store, {b} gave a drink to", f"When {a} and {b} went to the store, {a} gave a drink to",
                   f" {a}", f" {b}") for a, b in NAMES)
SETTINGS = ["str/logit_diff/denoise", "str/prob/denoise", "str/kl/noise", "str/logit_diff/noise"]


@pytest.fixture(scope="module")
def grid(tiny_llama, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("g") / "r.sqlite")
    base = Spec(model=tiny_llama.name, task=None, pairs=PAIRS, component="head")
    return disagreement_grid.load_or_compute_grid(base, store, tiny_llama, settings=SETTINGS), base, store


def test_spearman_and_jaccard_intervals_match_a_naive_bootstrap(grid):
    g, _, _ = grid
    gs = robust.grid_samples(g, n_boot=300, seed=1)
    ra = robust.robust_agreement(gs, k=5, ci=0.9)
    a, b = SETTINGS[0], SETTINGS[2]
    row = ra[(ra.setting_a == a) & (ra.setting_b == b)].iloc[0]
    idx = np.random.default_rng(1).integers(0, len(PAIRS), size=(300, len(PAIRS)))
    v = gs.valid
    sp, kd = [], []
    for i in idx:  # resample whole prompts by hand, recompute each setting's effects
        w = np.bincount(i, minlength=len(PAIRS))[None] / len(PAIRS)
        ea, eb = (uncertainty.samples(uncertainty.matrices(g.results[s].per_prompt, len(g.results[s].table))[0], g.results[s].meta["per_prompt_ref"],
                                      g.specs[s].metric, g.specs[s].direction, w)[v, 0] for s in (a, b))
        sp.append(sps.spearmanr(ea, eb).statistic)
        kd.append(sps.kendalltau(ea, eb).statistic)
    assert row.spearman_lo == pytest.approx(np.quantile(sp, 0.05), abs=1e-9)
    assert row.spearman_hi == pytest.approx(np.quantile(sp, 0.95), abs=1e-9)
    assert row.kendall_lo == pytest.approx(np.quantile(kd[:robust.KENDALL_BOOT], 0.05), abs=1e-9)
    assert 0 <= row.topk_jaccard_lo <= row.topk_jaccard_hi <= 1


def test_split_half_floor_equals_two_halves_run_separately(grid, tiny_llama):
    g, base, store = grid
    gs = robust.grid_samples(g, n_boot=50)
    ra = robust.robust_agreement(gs, kendall=False)
    floor = ra[ra.setting_a == SETTINGS[0]].iloc[0].floor_a
    s = disagreement_grid.spec_for(base, SETTINGS[0])
    first = service.run(s.with_(pairs=PAIRS[:3]), store=store, lm=tiny_llama)
    second = service.run(s.with_(pairs=PAIRS[3:]), store=store, lm=tiny_llama)
    e1, e2 = (stats.effect_series(r.table, "logit_diff").to_numpy()[gs.valid] for r in (first, second))
    assert floor == pytest.approx(sps.spearmanr(e1, e2).statistic, abs=1e-4)


def test_robust_labels_match_an_independent_bootstrap(grid):
    g, _, _ = grid
    gs = robust.grid_samples(g, n_boot=200, seed=2)
    dis = robust.robust_disagreements(gs)
    assert set(dis["kind"]) <= {"detected/missed", "sign flip"} and dis["frequency"].between(0, 1).all()
    assert (dis["robust"] == (dis["frequency"] >= 0.95)).all()
    if dis.empty:
        pytest.skip("no disagreement on this tiny grid")
    row = dis.iloc[0]
    c = gs.labels.index(row.component)
    idx = np.random.default_rng(2).integers(0, len(PAIRS), size=(200, len(PAIRS)))
    hits = 0
    for i in idx:
        w = np.bincount(i, minlength=len(PAIRS))[None] / len(PAIRS)
        vals = {}
        for s in (row.setting_a, row.setting_b):
            r = g.results[s]
            vals[s] = uncertainty.samples(uncertainty.matrices(r.per_prompt, len(r.table))[0], r.meta["per_prompt_ref"], g.specs[s].metric, g.specs[s].direction, w)[:, 0]
        if row.kind == "detected/missed":
            da, db = (stats.detect(np.where(gs.valid, vals[s], np.nan))["detected"].to_numpy() for s in (row.setting_a, row.setting_b))
            hits += bool(da[c] and not db[c])
        else:
            ea = 1e-4 * np.nanmax(np.abs(vals[row.setting_a][gs.valid]))
            eb = 1e-4 * np.nanmax(np.abs(vals[row.setting_b][gs.valid]))
            hits += bool(vals[row.setting_a][c] > ea and vals[row.setting_b][c] < -eb)
    assert row.frequency == pytest.approx(hits / 200)
    assert robust.robust_summary(dis, gs)
