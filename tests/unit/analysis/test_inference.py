"""patching.analysis.inference: the sign-flip test against TransformerLens
4.3's own function, Benjamini-Hochberg and Spearman-Brown by hand, the
expanded percentile interval's level by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from patching.analysis import inference


@pytest.mark.parametrize("n", [1, 5, 8, 12])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_pvalues_equal_transformer_lens_exact(n, alternative):
    from transformer_lens.utilities.statistics import sign_flip_permutation_pvalue

    rng = np.random.default_rng(n)
    d = rng.standard_t(3, size=(40, n)) + rng.normal(0, 1, size=(40, 1))
    d[3] = 0.0  # every pattern ties: p = 1
    d[4, :] = 0.5  # the observed mean is the largest: p = 2 / 2^n two-sided
    ours = inference.sign_flip_pvalues(d, alternative)
    ref = sign_flip_permutation_pvalue(torch.tensor(d, dtype=torch.float64), alternative=alternative).numpy()
    np.testing.assert_array_equal(ours, ref)
    assert ours[3] == 1.0
    if alternative == "two-sided":
        assert ours[4] == pytest.approx(2 / 2 ** n)


def test_sign_flip_monte_carlo_follows_the_convention_and_the_exact_value():
    from transformer_lens.utilities.statistics import sign_flip_permutation_pvalue

    rng = np.random.default_rng(1)
    d = rng.normal(np.linspace(0.0, 1.2, 30)[:, None], 1.0, size=(30, 14))  # from no effect to a clear one
    exact = sign_flip_permutation_pvalue(torch.tensor(d), exact_max_n=14).numpy()  # 2^14 patterns, enumerated
    mc = inference.sign_flip_pvalues(d, n_permutations=4999)
    assert np.all(mc >= 1 / 5000) and np.all(mc <= 1)
    # (hits + 1) / (patterns + 1) around the exact p: a test whose p is clearly not small stops after 199
    # patterns (sequential Monte Carlo), the small ones go on to 4,999, so their error is small too
    assert np.all(np.abs(mc - exact) < 4 * np.sqrt(exact * (1 - exact) / 200) + 2e-3), (mc, exact)
    small = exact < 0.005  # fewer than 20 hits in 1,999 patterns: these went on to all 4,999
    assert small.any() and np.all(np.abs(mc - exact)[small] < 4 * np.sqrt(exact[small] / 5000) + 5e-4)
    big = np.full((1, 20), 1.0)  # every random pattern is below the observed mean
    assert inference.sign_flip_pvalues(big, n_permutations=999)[0] == pytest.approx(1 / 1000, abs=2e-3)
    assert np.isnan(inference.sign_flip_pvalues(np.array([[1.0, np.nan, 2.0]]))[0])


def test_bh_qvalues_by_hand_and_step_up():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan, 0.2])
    # m = 5 finite: sorted 0.005, 0.01, 0.03, 0.04, 0.2 -> x m / rank = 0.025, 0.025, 0.05, 0.05, 0.2
    q = inference.bh_qvalues(p)
    np.testing.assert_allclose(q, [0.025, 0.05, 0.05, 0.025, np.nan, 0.2], equal_nan=True)
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=30)])
    q = inference.bh_qvalues(p)
    srt = np.sort(p)
    k = np.max(np.flatnonzero(srt <= 0.05 * np.arange(1, len(p) + 1) / len(p))) + 1  # the step-up rule
    assert (q <= 0.05).sum() == k
    assert np.all(q >= p - 1e-12) and np.all(q <= 1)


def test_spearman_brown_and_expanded_level_by_hand():
    assert inference.spearman_brown(0.5) == pytest.approx(2 / 3)
    np.testing.assert_allclose(inference.spearman_brown(np.array([0.0, 1.0, -0.5])), [0.0, 1.0, -2.0])
    t7 = sps.t.ppf(0.975, 7)
    assert inference.expanded_level(8) == pytest.approx(sps.norm.cdf(-math.sqrt(8 / 7) * t7))
    assert inference.expanded_level(8) < 0.025 < inference.expanded_level(1000) + 1e-3
    x = np.arange(1001, dtype=float)
    lo, hi = inference.interval(x, 10**6)  # n large: the plain percentile
    assert lo == pytest.approx(25, abs=0.1) and hi == pytest.approx(975, abs=0.1)


def test_significance_allowed_and_the_sentence():
    need = inference.MIN_PROMPTS["effect"]
    assert not inference.significance_allowed(need - 1) and inference.significance_allowed(need)
    assert inference.coverage_sentence(need) is None
    text = inference.coverage_sentence(8)
    assert "8 prompts" in text and str(need) in text
    with pytest.raises(ValueError):
        inference.significance_allowed(8, "nope")
