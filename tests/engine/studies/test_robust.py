"""The grid's statistics with uncertainty on a real (tiny) model: bootstrap
intervals, the per-prompt values behind the noise floors, and the
disagreements' sign-flip tests, each recomputed independently."""

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
from patching.analysis import inference
from patching.studies.disagreement import robust, significance

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
    v = gs.both(a, b)
    sp, kd = [], []
    for i in idx:  # resample whole prompts by hand, recompute each setting's effects
        w = np.bincount(i, minlength=len(PAIRS))[None] / len(PAIRS)
        ea, eb = (uncertainty.samples(uncertainty.matrices(g.results[s].per_prompt, len(g.results[s].table))[0], g.results[s].meta["per_prompt_ref"],
                                      g.specs[s].metric, g.specs[s].direction, w)[v, 0] for s in (a, b))
        sp.append(sps.spearmanr(ea, eb).statistic)
        kd.append(sps.kendalltau(ea, eb).statistic)
    lo = inference.expanded_level(len(PAIRS), 0.9)  # Hesterberg's expanded percentile interval
    assert row.spearman_lo == pytest.approx(np.quantile(sp, lo), abs=1e-5)
    assert row.spearman_hi == pytest.approx(np.quantile(sp, 1 - lo), abs=1e-5)
    assert row.kendall_lo == pytest.approx(np.quantile(kd[:robust.KENDALL_BOOT], lo), abs=1e-5)
    assert 0 <= row.topk_jaccard_lo <= row.topk_jaccard_hi <= 1


def test_per_prompt_values_behind_the_floors_equal_halves_run_separately(grid, tiny_llama):
    """A floor ranks each setting's effects on half of the prompts, from the
    stored per-prompt values: the same ranking as sweeping that half alone."""
    g, base, store = grid
    gs = robust.grid_samples(g, n_boot=50)
    for setting in (SETTINGS[0], SETTINGS[2]):
        v = gs.measured[setting]
        s = disagreement_grid.spec_for(base, setting)
        for half in (slice(0, 3), slice(3, 6)):
            alone = service.run(s.with_(pairs=PAIRS[half]), store=store, lm=tiny_llama)
            direct = stats.effect_series(alone.table, s.metric).to_numpy()[v]
            from_stored = gs.per_prompt[setting][v][:, half].mean(axis=1) / gs.gap[setting][half].mean()  # a ratio of the half's means
            assert sps.spearmanr(direct, from_stored).statistic == pytest.approx(1.0, abs=1e-6)


def test_disagreement_tests_match_an_independent_computation(grid):
    from transformer_lens.utilities.statistics import sign_flip_permutation_pvalue
    import torch

    g, _, _ = grid
    gs = robust.grid_samples(g, n_boot=50)
    tests = significance.disagreement_tests(gs)
    assert len(tests) and set(tests["kind"]) <= set(significance.KINDS)
    for kind, grp in tests.groupby("kind"):
        np.testing.assert_allclose(grp["q"], inference.bh_qvalues(grp["p"].to_numpy()))
    for row in tests[tests["kind"] == "detected/missed"].head(3).itertuples():
        c = gs.labels.index(row.component)
        d = 0.0
        for s, sign in ((row.setting_a, 1), (row.setting_b, -1)):
            r = g.results[s]
            mats, _ = uncertainty.matrices(r.per_prompt, len(r.table))
            ref = r.meta["per_prompt_ref"]
            if g.specs[s].metric == "logit_diff":  # the ratio of means' numerator per prompt over the mean gap
                lc, lo = np.array(ref["ld_clean"]), np.array(ref["ld_corrupt"])
                x = ((mats["ld_patched"] - lo) if g.specs[s].direction == "denoise" else (lc - mats["ld_patched"])) / (lc - lo).mean()
            else:
                x = mats[g.specs[s].metric]
            live = gs.measured[s]
            z = (x[c] - x[live].mean(axis=0)) / stats.effect_series(r.table, g.specs[s].metric).to_numpy()[live].std()
            d = d + sign * np.sign(z.mean()) * z
        assert row.p == float(sign_flip_permutation_pvalue(torch.tensor(d), alternative="two-sided"))
    assert significance.tests_summary(tests, gs)
