"""Tests for patching.analysis.stats: checked against scipy and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from patching.analysis import stats
from patching.analysis import tables
from patching.analysis import text as analysis_text

MINUS = "\u2212"


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """No statistic may emit RuntimeWarnings (division by zero, constant input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------- labels


def test_component_labels_heads_positions_and_head_pos():
    df = pd.DataFrame(
        {
            "component": ["head", "resid", "head"],
            "layer": [9, 3, 9],
            "head": pd.array([6, None, 6], dtype="Int64"),
            "pos": pd.array([None, 5, 5], dtype="Int64"),
        }
    )
    assert stats.component_labels(df).tolist() == ["L9H6", "L3P5", "L9H6P5"]


def test_component_labels_prefix_kind_only_on_collision():
    df = pd.DataFrame(
        {
            "component": ["mlp", "attn", "mlp", "head"],
            "layer": [3, 3, 4, 4],
            "head": pd.array([None, None, None, 1], dtype="Int64"),
            "pos": pd.array([5, 5, 5, None], dtype="Int64"),
        }
    )
    assert stats.component_labels(df).tolist() == ["mlp:L3P5", "attn:L3P5", "L4P5", "L4H1"]
    assert stats.component_labels(df, kind=True).tolist() == ["mlp:L3P5", "attn:L3P5", "mlp:L4P5", "head:L4H1"]
    assert stats.component_labels(df, kind=False).tolist() == ["L3P5", "L3P5", "L4P5", "L4H1"]


def test_effect_series_indexes_by_label_and_rejects_duplicates():
    df = pd.DataFrame(
        {
            "component": ["head", "head"],
            "layer": [9, 10],
            "head": pd.array([6, 7], dtype="Int64"),
            "pos": pd.array([None, None], dtype="Int64"),
            "logit_diff": pd.array([0.5, None], dtype="Float64"),
        }
    )
    s = stats.effect_series(df, "logit_diff")
    assert s.index.tolist() == ["L9H6", "L10H7"]
    assert s["L9H6"] == 0.5 and math.isnan(s["L10H7"])
    dup = pd.concat([df, df])
    with pytest.raises(ValueError, match="duplicate"):
        stats.effect_series(dup, "logit_diff")


# ---------------------------------------------------------------- detection


def test_detect_positive_outlier_hand_computed():
    # mean 1, population SD sqrt((9*1 + 81)/10) = 3 -> z(10) = 3, z(0) = -1/3
    x = np.r_[np.zeros(9), 10.0]
    d = stats.detect(x)
    assert d["detected"].tolist() == [False] * 9 + [True]
    assert d["sign"].tolist() == [""] * 9 + ["positive"]
    np.testing.assert_allclose(d["z"], np.r_[np.full(9, -1 / 3), 3.0])
    assert d.attrs["mean"] == pytest.approx(1.0)
    assert d.attrs["sd"] == pytest.approx(3.0)
    assert d.attrs["upper"] == pytest.approx(7.0)
    assert d.attrs["lower"] == pytest.approx(-5.0)


def test_detect_uses_population_sd():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    d = stats.detect(x)
    np.testing.assert_allclose(d["z"], (x - x.mean()) / x.std(ddof=0))
    assert not np.allclose(d["z"], (x - x.mean()) / x.std(ddof=1))


def test_detect_positive_and_negative_outliers_and_index():
    x = pd.Series(np.r_[np.zeros(8), 10.0, -10.0], index=[f"L{i}H0" for i in range(10)])
    d = stats.detect(x)
    # mean 0, SD sqrt(200/10) -> |z| = 10/sqrt(20) = 2.236 > 2
    assert d.index.tolist() == x.index.tolist()
    assert d.loc["L8H0", "sign"] == "positive" and d.loc["L9H0", "sign"] == "negative"
    assert d["detected"].sum() == 2
    assert d.loc["L9H0", "z"] == pytest.approx(-10 / math.sqrt(20))


def test_detect_threshold_is_strict_and_k_matters():
    x = np.r_[np.zeros(8), 10.0, -10.0]  # |z| = 2.236
    assert stats.detect(x, k=2.2)["detected"].sum() == 2
    assert stats.detect(x, k=2.3)["detected"].sum() == 0


def test_detect_sign_follows_effect_not_side_of_mean():
    # A low-side outlier whose effect is still positive is a detected
    # component with a positive effect (the paper's sign = sign of the effect).
    x = np.r_[np.full(20, 10.0), 1.0]
    d = stats.detect(x)
    assert d["detected"].iloc[-1] and d["z"].iloc[-1] < -2
    assert d["sign"].iloc[-1] == "positive"


def test_detect_constant_input_detects_nothing_without_warnings():
    d = stats.detect(np.full(10, 3.0))
    assert not d["detected"].any()
    assert (d["z"] == 0).all()
    assert (d["sign"] == "").all()
    assert d.attrs["sd"] == 0


def test_detect_float_noise_around_constant_is_constant():
    x = np.full(10, 0.1)
    x[0] = np.nextafter(0.1, 1.0)
    d = stats.detect(x)
    assert not d["detected"].any()


def test_detect_ignores_nans_and_infs():
    clean = np.r_[np.zeros(9), 10.0]
    x = np.r_[np.nan, clean, np.inf]
    d = stats.detect(x)
    assert not d["detected"].iloc[0] and not d["detected"].iloc[-1]
    assert math.isnan(d["z"].iloc[0]) and math.isnan(d["z"].iloc[-1])
    np.testing.assert_allclose(d["z"].iloc[1:-1], stats.detect(clean)["z"])


def test_detect_all_nan_and_empty():
    d = stats.detect(np.full(4, np.nan))
    assert not d["detected"].any() and d["z"].isna().all()
    assert len(stats.detect(np.array([]))) == 0


def test_detect_small_n_cannot_reach_two_sd():
    # with ddof=0, max |z| = sqrt(n - 1): n = 5 -> 2, never > 2
    x = np.array([0, 0, 0, 0, 100.0])
    assert stats.detect(x)["z"].max() == pytest.approx(2.0)
    assert not stats.detect(x)["detected"].any()


# ---------------------------------------------------------------- rank agreement


def test_rank_agreement_hand_computed_no_ties():
    # d = [-1, 1, -1, 1, 0]: rho = 1 - 6*4/(5*24) = 0.8; 2 discordant of 10 pairs: tau = 0.6
    r = stats.rank_agreement([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert r["spearman"] == pytest.approx(0.8)
    assert r["kendall"] == pytest.approx(0.6)
    assert r["n"] == 5


def test_rank_agreement_with_ties_matches_hand_and_scipy():
    a, b = [1, 2, 3, 4], [1, 1, 2, 3]
    r = stats.rank_agreement(a, b)
    # average ranks of b: [1.5, 1.5, 3, 4]; Pearson of ranks = 4.5 / sqrt(5 * 4.5)
    assert r["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    # tau-b: 5 concordant, 0 discordant, 1 tie in b: 5 / sqrt(6 * 5)
    assert r["kendall"] == pytest.approx(5 / math.sqrt(30))
    assert r["spearman"] == pytest.approx(sps.spearmanr(a, b).statistic)
    assert r["kendall"] == pytest.approx(sps.kendalltau(a, b).statistic)


def test_rank_agreement_matches_scipy_on_random_vectors():
    rng = np.random.default_rng(7)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=1.0, size=50)
    r = stats.rank_agreement(a, b)
    assert r["spearman"] == pytest.approx(sps.spearmanr(a, b).statistic)
    assert r["kendall"] == pytest.approx(sps.kendalltau(a, b, variant="b").statistic)


def test_rank_agreement_constant_vectors_give_nan_not_errors():
    r = stats.rank_agreement(np.ones(10), np.arange(10.0))
    assert math.isnan(r["spearman"]) and math.isnan(r["kendall"])
    assert r["sign_flips"] == 0
    r = stats.rank_agreement(np.zeros(5), np.zeros(5))
    assert math.isnan(r["spearman"]) and math.isnan(r["topk_jaccard"])
    r = stats.rank_agreement([1.0], [2.0])
    assert math.isnan(r["spearman"]) and r["n"] == 1


def test_rank_agreement_drops_nans_and_aligns_series_by_label():
    a = pd.Series([1.0, 2.0, np.nan, 4.0, 5.0, 3.0], index=["L0H0", "L0H1", "L0H2", "L0H3", "L0H4", "L5H5"])
    b = pd.Series([3.0, 2.0, 1.0, 5.0, np.nan], index=["L0H3", "L0H1", "L0H2", "L0H0", "L0H4"])
    r = stats.rank_agreement(a, b)
    # usable: L0H0 (1, 5), L0H1 (2, 2), L0H3 (4, 3)
    assert r["n"] == 3
    assert r["spearman"] == pytest.approx(sps.spearmanr([1, 2, 4], [5, 2, 3]).statistic)
    assert r["kendall"] == pytest.approx(sps.kendalltau([1, 2, 4], [5, 2, 3]).statistic)


def test_rank_agreement_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="different lengths"):
        stats.rank_agreement([1, 2, 3], [1, 2])


def _lab(values):
    return pd.Series(values, index=[f"L{i}" for i in range(len(values))], dtype=float)


def test_topk_jaccard_hand_computed():
    a, b = _lab([5, 4, 3, 2, 1]), _lab([1, 2, 3, 4, 5])
    assert stats.rank_agreement(a, b, k=2)["topk_jaccard"] == 0.0  # {L0,L1} vs {L4,L3}
    assert stats.rank_agreement(a, b, k=3)["topk_jaccard"] == pytest.approx(1 / 5)  # share L2
    assert stats.rank_agreement(a, b, k=10)["topk_jaccard"] == 1.0  # k > n: everything


def test_topk_jaccard_uses_absolute_effect():
    a, b = _lab([-5, 4, 0, 0, 1]), _lab([5, 0, 4, 0, 0])
    # top-2 by |effect|: {L0, L1} vs {L0, L2} -> 1/3 (by signed value a's top-2 would be {L1, L4})
    assert stats.rank_agreement(a, b, k=2)["topk_jaccard"] == pytest.approx(1 / 3)


def test_topk_jaccard_ties_broken_by_natural_label_order_and_symmetric():
    idx = ["L10H0", "L9H6", "L2H0", "L9H7"]
    a = pd.Series([1.0, 1.0, 1.0, 1.0], index=idx)  # all tied: top-2 = L2H0, L9H6 (natural order)
    b = pd.Series({"L10H0": 0.0, "L9H6": 0.0, "L2H0": 1.0, "L9H7": 1.0})  # top-2 = L2H0, L9H7
    assert stats.rank_agreement(a, b, k=2)["topk_jaccard"] == pytest.approx(1 / 3)
    assert stats.rank_agreement(b, a, k=2)["topk_jaccard"] == pytest.approx(1 / 3)
    # c's strict top-2 is {L2H0, L9H6}: Jaccard 1 only if a's tie is broken in
    # natural order (lexicographic gives {L10H0, L2H0}, input order {L10H0, L9H6})
    c = pd.Series({"L10H0": 0.0, "L9H6": 1.0, "L2H0": 2.0, "L9H7": 0.0})
    assert stats.rank_agreement(a, c, k=2)["topk_jaccard"] == 1.0
    assert stats.rank_agreement(c, a, k=2)["topk_jaccard"] == 1.0


def test_sign_flips_counted_beyond_eps():
    a = np.array([1.0, -1.0, 0.5, 1e-9, 0.0, -2.0])
    b = np.array([-1.0, -1.0, 0.5, -1e-9, 3.0, 2.0])
    r = stats.rank_agreement(a, b, min_sd=0.0)
    assert r["sign_flips"] == 2  # index 0 and 5; 1e-9 is float noise, 0 is no sign
    # by default each side must be at least 1 SD (population, over the setting) from 0:
    # SD(a) = 1.05, SD(b) = 1.44, so only index 5 (-2 against +2) is a flip
    assert stats.rank_agreement(a, b)["sign_flips"] == 1
    assert stats.rank_agreement(a, b, magnitudes=True)["sign_flips"] == 0  # magnitudes have no sign
    # float noise relative to the largest effect is not a flip ...
    a = np.array([1.0, -1e-6, 0.5])
    b = np.array([1.0, 1e-6, 0.5])
    assert stats.rank_agreement(a, b, min_sd=0.0)["sign_flips"] == 0
    # ... unless eps is switched off
    assert stats.rank_agreement(a, b, rel_eps=0.0, min_sd=0.0)["sign_flips"] == 1


def test_sign_flips_detected_counts_only_detected_components():
    a = np.zeros(20)
    b = np.zeros(20)
    a[0], a[1], a[2] = 5.0, 0.1, -0.1
    b[0], b[1], b[2], b[3] = -0.2, -0.1, 0.1, 5.0
    da, db = stats.detect(a), stats.detect(b)
    assert da["detected"].tolist()[:4] == [True, False, False, False]
    assert db["detected"].tolist()[:4] == [False, False, False, True]
    r = stats.rank_agreement(a, b, min_sd=0.0)
    assert r["sign_flips"] == 3
    assert r["sign_flips_detected"] == 1
    assert stats.rank_agreement(a, b)["sign_flips"] == 0  # -0.2 is far below 1 SD of b


# ---------------------------------------------------------------- settings matrix


def test_settings_matrix_pairs_and_square():
    rng = np.random.default_rng(0)
    base = _lab(rng.normal(size=30))
    results = {
        "str/logit_diff/denoise": base,
        "str/prob/denoise": base * 0.1,
        "gn/logit_diff/denoise": -base,
    }
    long = tables.settings_matrix(results, k=5)
    assert len(long) == 3
    assert list(zip(long["setting_a"], long["setting_b"])) == [
        ("str/logit_diff/denoise", "str/prob/denoise"),
        ("str/logit_diff/denoise", "gn/logit_diff/denoise"),
        ("str/prob/denoise", "gn/logit_diff/denoise"),
    ]
    assert long["differs_in"].tolist() == ["metric", "corruption", "corruption,metric"]
    assert long["spearman"].tolist() == pytest.approx([1.0, -1.0, -1.0])
    assert long["topk_jaccard"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    big = int((base.abs() > base.std(ddof=0)).sum())  # a flip needs each side beyond 1 SD of its setting
    assert 0 < big < 30 and long["sign_flips"].tolist() == [0, big, big]
    assert long.attrs["k"] == 5

    sq = tables.square(long, "spearman")
    assert sq.index.tolist() == list(results) and sq.columns.tolist() == list(results)
    np.testing.assert_allclose(np.diag(sq), 1.0)
    np.testing.assert_allclose(sq.to_numpy(), sq.to_numpy().T)
    assert sq.loc["gn/logit_diff/denoise", "str/prob/denoise"] == pytest.approx(-1.0)
    flips = tables.square(long, "sign_flips")
    np.testing.assert_allclose(np.diag(flips), 0.0)
    assert flips.loc["str/prob/denoise", "gn/logit_diff/denoise"] == big


def test_settings_matrix_single_setting_is_empty():
    long = tables.settings_matrix({"str/logit_diff/denoise": _lab([1.0, 2.0])})
    assert len(long) == 0 and "spearman" in long.columns
    sq = tables.square(long, "spearman")
    assert sq.shape == (1, 1) and sq.iloc[0, 0] == 1.0


def test_parse_setting():
    assert stats.parse_setting("str/logit_diff/denoise/s1_io") == {
        "corruption": "str",
        "metric": "logit_diff",
        "direction": "denoise",
        "variant": "s1_io",
        "method": "exact",
    }
    assert stats.parse_setting("my-run") is None


# ---------------------------------------------------------------- tables


def test_detection_table_lists_partial_detections_only():
    n = 20
    idx = [f"L{i}H0" for i in range(n)]
    a, b, c = (pd.Series(np.zeros(n), index=idx) for _ in range(3))
    # L0H0 detected everywhere -> not listed; L1H0 in a and b only; L2H0 negative in a only
    for s in (a, b, c):
        s["L0H0"] = 5.0
    a["L1H0"], b["L1H0"], c["L1H0"] = 5.0, 5.0, 0.1
    a["L2H0"], b["L2H0"], c["L2H0"] = -5.0, -0.1, 0.0
    c["L3H0"] = np.nan
    results = {"A/x/denoise": a, "B/x/denoise": b, "C/x/denoise": c}
    t = tables.detection_table(results)
    assert set(t["component"]) == {"L1H0", "L2H0"}
    assert list(t.columns) == ["component", *results, "detected_in", "missed_in", "negative_in"]
    row = t.set_index("component")
    assert row.loc["L1H0", "detected_in"] == "A/x/denoise, B/x/denoise"
    assert row.loc["L1H0", "missed_in"] == "C/x/denoise"
    assert row.loc["L1H0", "negative_in"] == ""
    assert row.loc["L2H0", "detected_in"] == "A/x/denoise"
    assert row.loc["L2H0", "negative_in"] == "A/x/denoise"
    assert row.loc["L2H0", "A/x/denoise"] == -5.0


def test_detection_table_empty_when_all_agree():
    x = _lab(np.r_[np.zeros(9), 10.0])
    t = tables.detection_table({"a/b/c": x, "d/e/f": x * 2})
    assert len(t) == 0 and "detected_in" in t.columns


def test_sign_flip_table():
    idx = [f"L{i}H0" for i in range(10)]
    a = pd.Series([1.0, -0.5, 0.2, 1e-9, 0, 0, 0, 0, 0, 0], index=idx)
    b = pd.Series([-2.0, -0.5, 0.2, -1e-9, 0, 0, 0, 0, 0, 0], index=idx)
    c = pd.Series([1.0, 0.5, 0.2, 0, 0, 0, 0, 0, 0, 0], index=idx)
    t = tables.sign_flip_table({"A/m/d": a, "B/m/d": b, "C/m/d": c})
    assert t["component"].tolist() == ["L0H0", "L1H0"]  # L3H0 is float noise
    row = t.set_index("component")
    assert row.loc["L0H0", "positive_in"] == "A/m/d, C/m/d"
    assert row.loc["L0H0", "negative_in"] == "B/m/d"
    assert row.loc["L0H0", "strongest_negative"] == "B/m/d"
    assert row.loc["L1H0", "positive_in"] == "C/m/d"
    assert (t["flip_strength"] > 0).all()


# ---------------------------------------------------------------- summary

HEADS = [f"L{layer}H{head}" for layer in range(12) for head in range(12)]
POS_HEADS = {"L9H9": 0.5, "L8H6": 0.4, "L7H9": 0.35}
NEG_HEADS = {"L10H7": -0.3, "L11H10": -0.25}


def _vec(rng, noise, spikes):
    v = pd.Series(rng.normal(0.0, noise, len(HEADS)), index=HEADS)
    for lab, val in spikes.items():
        v[lab] = val
    return v


def _ioi(prob_negative: float, prob_corruption: str = "str"):
    """IOI-like results: LD and KL see the negative heads; probability sees
    them at ``prob_negative``."""
    rng = np.random.default_rng(0)
    return {
        "str/logit_diff/denoise": _vec(rng, 0.02, {**POS_HEADS, **NEG_HEADS}),
        f"{prob_corruption}/prob/denoise": _vec(
            rng, 0.002, {**{k: 0.4 * v for k, v in POS_HEADS.items()}, **{k: prob_negative for k in NEG_HEADS}}
        ),
        "str/kl/denoise": _vec(rng, 0.02, {**POS_HEADS, **NEG_HEADS}),
    }


def _summary(results, baselines=None, k=10):
    return analysis_text.summarize(
        tables.settings_matrix(results, k=k), tables.detection_table(results), tables.sign_flip_table(results), baselines
    )


def test_summary_explains_probability_floor_with_baseline():
    results = _ioi(prob_negative=-0.02)
    # the data really show the pattern: negative under LD, missed under prob
    assert stats.detect(results["str/logit_diff/denoise"]).loc["L10H7", "sign"] == "negative"
    assert not stats.detect(results["str/prob/denoise"]).loc["L10H7", "detected"]
    text = _summary(results, baselines={"str/prob/denoise": {"p_corrupt": 0.03}})
    floor = [s for s in text if "P_corrupt" in s]
    assert len(floor) == 1
    assert "L10H7" in floor[0] and "L11H10" in floor[0]
    assert "str/prob/denoise" in floor[0]
    assert f"{MINUS}0.03" in floor[0]
    assert f"{MINUS}0.02" in floor[0]  # the prob effect, from the data


def test_summary_floor_without_baseline_quotes_no_number():
    text = _summary(_ioi(prob_negative=-0.02))
    floor = [s for s in text if "P_corrupt" in s]
    assert len(floor) == 1 and "here" not in floor[0]


def test_summary_no_probability_floor_when_prob_detects_negatives():
    results = _ioi(prob_negative=-0.2)
    assert stats.detect(results["str/prob/denoise"]).loc["L10H7", "sign"] == "negative"
    text = _summary(results, baselines={"str/prob/denoise": {"p_corrupt": 0.03}})
    assert not any("P_corrupt" in s for s in text)
    assert not any("cannot fall below" in s for s in text)


def test_summary_no_probability_floor_when_another_factor_also_differs():
    # negative under str/logit_diff, missed under gn/prob: metric AND corruption differ
    results = _ioi(prob_negative=-0.02, prob_corruption="gn")
    text = _summary(results)
    assert not any("P_corrupt" in s for s in text)


def test_summary_names_least_and_most_agreeing_pairs():
    rng = np.random.default_rng(1)
    x = pd.Series(rng.normal(size=60), index=HEADS[:60])
    c = pd.Series(rng.normal(size=60), index=HEADS[:60])
    results = {
        "str/logit_diff/denoise": x,
        "str/kl/denoise": x + rng.normal(scale=0.01, size=60),
        "gn/logit_diff/denoise": c,
        "gn/logit_diff/noise": -c,
    }
    long = tables.settings_matrix(results)
    text = _summary(results)
    least = next(s for s in text if s.startswith("Least agreement"))
    most = next(s for s in text if s.startswith("Most agreement"))
    assert "gn/logit_diff/denoise vs gn/logit_diff/noise" in least
    assert f"Spearman {MINUS}1.00" in least
    assert "differ in direction" in least
    assert "str/logit_diff/denoise vs str/kl/denoise" in most
    rho = long.set_index(["setting_a", "setting_b"]).loc[("str/logit_diff/denoise", "str/kl/denoise"), "spearman"]
    assert f"Spearman {rho:.2f}" in most
    assert "top-10 Jaccard" in most
    # the denoise/noise pair disagrees, so the direction mechanism is named
    assert any("sufficient" in s and "necessary" in s for s in text)


def _gn_results(gn_disagrees: bool):
    rng = np.random.default_rng(2)
    spikes = {**POS_HEADS, **NEG_HEADS}
    base = _vec(rng, 0.02, spikes)
    if gn_disagrees:
        gn = _vec(rng, 0.05, {"L0H10": -0.5, "L3H0": 0.45, "L9H9": 0.5})
    else:
        gn = base * 1.5 + rng.normal(0.0, 0.001, len(HEADS))
    return {"str/logit_diff/denoise": base, "gn/logit_diff/denoise": gn}


def test_summary_gn_mechanism_when_gn_disagrees():
    text = _summary(_gn_results(True))
    gn = [s for s in text if "off-distribution" in s]
    assert len(gn) == 1
    assert "only under gn" in gn[0] and "L0H10" in gn[0] and "L3H0" in gn[0]
    assert "only under str" in gn[0] and "L10H7" in gn[0]


def test_summary_no_gn_mechanism_when_gn_agrees():
    results = _gn_results(False)
    assert len(tables.detection_table(results)) == 0
    text = _summary(results)
    assert not any("off-distribution" in s for s in text)
    assert any(s.startswith("No component is detected") for s in text)
    assert any(s.startswith("One pair of settings") for s in text)


def test_summary_direction_mechanism_only_when_directions_disagree():
    rng = np.random.default_rng(4)
    den = _vec(rng, 0.02, {"L9H9": 0.5, "L8H6": 0.4})
    noi_same = den + rng.normal(0.0, 0.001, len(HEADS))
    noi_diff = _vec(rng, 0.02, {"L9H9": 0.5, "L5H5": 0.4})
    text = _summary({"str/logit_diff/denoise": den, "str/logit_diff/noise": noi_diff})
    d = [s for s in text if "sufficient" in s]
    assert len(d) == 1
    assert "only when denoising: L8H6" in d[0] and "only when noising: L5H5" in d[0]
    text = _summary({"str/logit_diff/denoise": den, "str/logit_diff/noise": noi_same})
    assert not any("sufficient" in s for s in text)


def test_summary_reports_biggest_sign_flip_from_data():
    rng = np.random.default_rng(5)
    a = _vec(rng, 0.02, {"L9H9": 0.5, "L0H10": 0.3})
    b = _vec(rng, 0.02, {"L9H9": 0.5, "L0H10": -0.4})
    text = _summary({"str/logit_diff/denoise": a, "str/kl/denoise": b})
    flip = next(s for s in text if "change sign" in s or "changes sign" in s)
    assert "Biggest: L0H10 is +0.3 under str/logit_diff/denoise but " + MINUS + "0.4 under str/kl/denoise" in flip


def test_summary_constant_setting_does_not_crash():
    x = _lab(np.r_[np.zeros(9), 10.0])
    text = _summary({"str/logit_diff/denoise": x, "str/prob/denoise": _lab(np.zeros(10))})
    assert any("undefined" in s for s in text)


def test_summary_single_setting():
    text = _summary({"str/logit_diff/denoise": _lab([1.0, 2.0, 3.0])})
    assert text[0].startswith("Fewer than two settings")


def test_summary_does_not_headline_noise_flips():
    # in the IOI-like data only undetected noise heads flip sign
    results = _ioi(prob_negative=-0.02)
    assert tables.sign_flip_table(results).empty  # below 1 SD on either side: not a flip at all
    flips = tables.sign_flip_table(results, min_sd=0.0)
    assert len(flips) > 0 and (flips["detected_in"] == "").all()
    text = analysis_text.summarize(tables.settings_matrix(results, k=10), tables.detection_table(results), flips, None)
    flip = next(s for s in text if "sign between settings" in s)
    assert "none of them is detected" in flip and "Biggest" not in flip


def test_summary_no_probability_floor_when_prob_effect_is_positive():
    # missed under prob but on the other side of zero: not the floor pattern
    results = _ioi(prob_negative=+0.02)
    assert not stats.detect(results["str/prob/denoise"]).loc["L10H7", "detected"]
    text = _summary(results)
    assert not any("P_corrupt" in s for s in text)


def test_summary_floor_for_noising_names_the_clean_baseline():
    results = {k.replace("denoise", "noise"): v for k, v in _ioi(prob_negative=-0.02).items()}
    text = _summary(results, baselines={"str/prob/noise": {"p_corrupt": 0.03, "p_clean": 0.48}})
    floor = [s for s in text if "cannot fall below" in s]
    # noising: effect = P_clean - P_patched >= -(1 - P_clean)
    assert len(floor) == 1 and f"{MINUS}(1 {MINUS} P_clean(answer)) (here {MINUS}0.52)" in floor[0]


def test_detection_per_component_kind():
    """Heads and MLPs have different scales: the 2-SD rule runs per kind."""
    import pandas as pd

    from patching.analysis.detection import with_detection

    heads = [0.01 * ((i % 5) - 2) for i in range(40)] + [0.5]
    mlps = [1.0 + 0.1 * ((i % 3) - 1) for i in range(10)] + [3.0]
    t = pd.DataFrame({"component": ["head"] * len(heads) + ["mlp"] * len(mlps),
                      "layer": list(range(len(heads))) + list(range(len(mlps))),
                      "head": [0] * len(heads) + [None] * len(mlps), "pos": [None] * (len(heads) + len(mlps)),
                      "kl": heads + mlps})
    td, ths = with_detection(t, "kl", by="component")
    assert set(ths) == {"head", "mlp"}
    det = td[td["detected"] != ""]
    assert set(zip(det["component"], det["kl"])) == {("head", 0.5), ("mlp", 3.0)}
    # Pooled, the MLPs' scale hides the strong head.
    pooled, _ = with_detection(t, "kl")
    assert (pooled[pooled["kl"] == 0.5]["detected"] == "").all()
