"""The Disagreement grid's statistics with uncertainty (no model): only
measurements count (every number equals the one computed with the no-op
rows dropped), the disagreements' p-values equal TransformerLens's sign-flip
test on the per-prompt differences and their q-values Benjamini-Hochberg's,
the noise floors behave as a reference, and prompts pair by identity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from patching.analysis import inference
from patching.analysis.detection import with_detection
from patching.analysis.measurement import only_measured
from patching.core.errors import PatchboardError
from patching.studies.disagreement import floor, robust, significance, tables
from patching.studies.disagreement.report import grid_report
from tests.helpers import synthetic_grid


@pytest.fixture(scope="module")
def pair():
    g = synthetic_grid.grid()
    return g, synthetic_grid.dropped(g)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False, atol=1e-6, rtol=1e-6)


def test_every_point_statistic_equals_the_one_without_no_op_rows(pair):
    g, d = pair
    eff, eff_d = g.effects(), d.effects()
    assert g.n_unmeasured() == 24 and d.n_unmeasured() == 0
    assert all(v.isna().sum() == 24 for v in eff.values())
    _frames_equal(tables.agreement(eff), tables.agreement(eff_d))
    _frames_equal(tables.disagreements(eff), tables.disagreements(eff_d))
    _frames_equal(tables.sign_flips(eff), tables.sign_flips(eff_d))
    _frames_equal(tables.detection_sets(eff).drop(columns="n_unmeasured"), tables.detection_sets(eff_d).drop(columns="n_unmeasured"))
    a, b = g.settings[0], g.settings[4]
    _frames_equal(tables.scatter_data(eff, a, b), tables.scatter_data(eff_d, a, b))
    assert tables.scatter_data(eff, a, b).attrs["n_unmeasured"] == 24
    t = g.results[a].table
    full, _ = with_detection(t, "logit_diff")
    live, _ = with_detection(only_measured(t), "logit_diff")
    _frames_equal(full[full["measured"]][["z", "detected"]], live[["z", "detected"]])
    assert (full.loc[~full["measured"], "detected"] == "").all() and full.loc[~full["measured"], "z"].isna().all()


def test_every_interval_and_test_equals_the_one_without_no_op_rows(pair):
    g, d = pair
    r, rd = grid_report(g, 5, n_boot=300), grid_report(d, 5, n_boot=300)
    cols = [c for c in r.agreement.columns if c != "n_unmeasured"]
    _frames_equal(r.agreement[cols], rd.agreement[cols])
    assert (r.agreement["n_unmeasured"] == 24).all() and (rd.agreement["n_unmeasured"] == 0).all()
    _frames_equal(r.robustness.disagreements, rd.robustness.disagreements)
    from patching.analysis.uncertainty import result_intervals

    res = g.results[g.settings[0]]
    iv, iv_d = result_intervals(res, 200), result_intervals(d.results[d.settings[0]], 200)
    live = res.table["measured"].to_numpy()
    _frames_equal(iv[live], iv_d)
    assert iv[~live].isna().all().all()  # not measured: no interval, no stability


def test_point_spearman_inside_its_interval(pair):
    g, _ = pair
    a = grid_report(g, 5, n_boot=400).agreement
    assert ((a["spearman_lo"] <= a["spearman"]) & (a["spearman"] <= a["spearman_hi"])).all()


def test_p_values_are_transformer_lens_sign_flip_tests_and_q_benjamini_hochberg(pair):
    from transformer_lens.utilities.statistics import sign_flip_permutation_pvalue

    g, _ = pair
    gs = robust.grid_samples(g, 200)
    tests = significance.disagreement_tests(gs)
    assert set(tests["kind"]) == {"detected/missed", "sign flip"}
    assert tests["disagreement"].any() and not tests["disagreement"].all()  # the families hold more than the disagreements shown
    flips = tests[tests["kind"] == "sign flip"]
    assert (flips.loc[~flips["disagreement"], "p"] == 1).all()  # the same sign under both: nothing to claim
    labels = list(gs.labels)
    tl = lambda x, alt: float(sign_flip_permutation_pvalue(torch.tensor(x, dtype=torch.float64), alternative=alt))  # noqa: E731
    for row in tests[tests["disagreement"]].groupby("kind").head(6).itertuples():
        c = labels.index(row.component)
        xa, xb = gs.per_prompt[row.setting_a][c], gs.per_prompt[row.setting_b][c]
        assert xa.mean() == pytest.approx(row.effect_a, rel=1e-5, abs=1e-9)  # the per-prompt values give back the effect
        if row.kind == "sign flip":
            assert row.p == tl(xa, "greater") if tl(xa, "greater") > tl(xb, "less") else row.p == tl(xb, "less")
            continue
        za, zb = [], []
        for s, x in ((row.setting_a, xa), (row.setting_b, xb)):
            live = gs.measured[s]
            pt = gs.point[s][live]
            zs = (x - gs.per_prompt[s][live].mean(axis=0)) / pt.std()
            (za if s == row.setting_a else zb).append(zs)
        sign_a = np.sign(za[0].mean())
        sign_b = np.sign(zb[0].mean()) or sign_a
        diff = sign_a * za[0] - sign_b * zb[0]
        assert diff.mean() == pytest.approx(row.difference, rel=1e-6)  # |z_A| - |z_B| on all prompts
        assert row.p == tl(diff, "two-sided")
    for kind, grp in tests.groupby("kind"):
        np.testing.assert_allclose(grp["q"], inference.bh_qvalues(grp["p"].to_numpy()))
    assert not tests["significant"].any()  # 8 prompts: too few for labels
    allowed = significance.disagreement_tests(gs, fdr=0.5)
    assert not allowed["significant"].any()


def test_significance_labels_need_enough_prompts():
    g = synthetic_grid.grid("str/*/denoise/s2,str/*/noise/s2", n=inference.MIN_PROMPTS["effect"], noise=0.1)
    r = grid_report(g, 5, n_boot=200)
    tests = r.robustness.disagreements
    assert r.robustness.significance_allowed and r.robustness.coverage_note is None
    assert tests["significant"].equals(tests["disagreement"] & (tests["q"] <= 0.05)) and tests["significant"].any()
    assert any("significant at FDR q = 0.05" in s for s in r.summary)


@pytest.mark.parametrize("n", [8, 32])
def test_families_keep_false_discoveries_rare_when_settings_measure_the_same_thing(n):
    """Settings that are scaled copies of one truth with their own noise: every
    disagreement is noise. Over 40 such grids (~100 tests each), a
    discovery at FDR 0.05 appears in at most 4 (the global null: BH keeps the
    chance of any at ~5 %; the fixed families keep it near 1 %), and the
    noise floors' test rejects at most 5 % of the pairs at 0.05."""
    any_hit, floor_p = 0, []
    for rep in range(40):
        gs = synthetic_grid.null_samples(n, 150, rep)
        tests = significance.disagreement_tests(gs, seed=rep)
        assert len(tests) > tests["disagreement"].sum()  # the family is fixed, not the shown disagreements
        any_hit += int((tests["disagreement"] & (tests["q"] <= 0.05)).any())
        if rep < 15:
            floor_p += list(floor.noise_floors(gs, splits=20, seed=rep)["floor_p"])
    assert any_hit <= 4
    assert np.mean(np.array(floor_p) < 0.05) <= 0.05


def test_noise_floor_is_a_reference():
    g = synthetic_grid.grid("str/logit_diff/denoise/s2,str/prob/denoise/s2", n=16, noise=0.5)
    gs = robust.grid_samples(g, 50)
    a, b = gs.settings
    gs.per_prompt[b] = gs.per_prompt[a].copy()  # the same setting twice: cross agreement is the floor
    same = floor.noise_floors(gs, splits=20)
    assert same.loc[0, "cross"] == pytest.approx(same.loc[0, "floor_a"]) == pytest.approx(same.loc[0, "floor_b"])
    assert same.loc[0, "floor_gap"] == pytest.approx(0.0, abs=1e-9) and same.loc[0, "floor_p"] >= 0.4
    gs.per_prompt[b] = -gs.per_prompt[a]  # the reverse ranking: far below the floor
    rev = floor.noise_floors(gs, splits=20)
    assert rev.loc[0, "cross"] < 0 < rev.loc[0, "floor_a"] and rev.loc[0, "floor_p"] < 0.01
    assert rev.loc[0, "floor_a_lo"] <= rev.loc[0, "floor_a"] <= rev.loc[0, "floor_a_hi"]
    # Spearman-Brown: the floor is 2r / (1 + r) of the mean split-half correlation, so above it when 0 < r < 1
    assert 0 < rev.loc[0, "floor_a"] < 1


def test_prompts_pair_by_identity_not_by_position(pair):
    g, _ = pair
    perm = np.random.default_rng(3).permutation(8)
    shuffled = synthetic_grid.grid(orders={("str", "noise", "s2"): perm})
    r, rs = grid_report(g, 5, n_boot=200), grid_report(shuffled, 5, n_boot=200)
    _frames_equal(r.agreement, rs.agreement)
    _frames_equal(r.robustness.disagreements, rs.robustness.disagreements)


def test_a_sweep_missing_a_prompt_is_refused_with_the_prompt_named():
    g = synthetic_grid.grid()  # its own: the test edits it
    s = next(s for s in g.settings if "/noise/" in s)
    res = g.results[s]
    meta = dict(res.meta, prompt_ids=list(res.meta["prompt_ids"]))
    meta["prompt_ids"][2] = "someotherprompt0"
    for x in g.settings:
        if "/noise/" in x:
            g.results[x] = type(res)(spec=g.results[x].spec, table=res.table, baselines={}, meta=meta, per_prompt=res.per_prompt)
    with pytest.raises(PatchboardError, match=r"lacks the prompt 'When A2 and B2 went to the shop"):
        grid_report(g, 5, n_boot=50)


def test_a_resample_with_a_vanishing_gap_is_dropped_not_the_setting(pair):
    g, _ = pair
    gs = robust.grid_samples(g, 200)
    s = next(x for x in gs.settings if "logit_diff" in x)
    assert gs.measured[s].sum() == 16  # every measured cell stays
    boot = gs.boot[s].copy()
    boot[:, :3] = np.nan  # as if three resamples drew prompts whose gaps cancel
    gs.boot[s] = boot
    a = robust.robust_agreement(gs, 5)
    row = a[(a.setting_a == s) | (a.setting_b == s)].iloc[0]
    assert np.isfinite(row.spearman_lo) and np.isfinite(row.topk_jaccard_hi)
