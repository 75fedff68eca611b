"""The coverage simulation behind the interval method and the minimum
numbers of prompts (patching/analysis/coverage.py; the full table:
benchmarks/coverage.py and docs/statistics.md): on synthetic per-prompt
effects shaped like the shipped demo's, the expanded percentile interval
covers >= 93 % from MIN_PROMPTS on, and fails below, where the pages
withhold "significant"."""

from __future__ import annotations

import pytest

from patching import demo
from patching.analysis import coverage, inference
from tests.helpers.demo import demo_result, demo_store

pytestmark = pytest.mark.skipif(not demo.DEMO_PATH.exists(), reason="no demo bundle: python -m patching demo build")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    store, fp = demo_store(tmp_path_factory.mktemp("demo"))
    gn = demo_result(store, fp, corruption="gn", direction="noise")  # the most skewed per-prompt values of the demo
    resid = demo_result(store, fp, component="resid_pre")
    str_ = demo_result(store, fp)
    src = coverage.sources_from({"head gn/noise/s2": gn, "resid_pre": resid})
    return {"effect": [s for s in src["effect"] if s.name.endswith(" kl")], "logit_diff": src["logit_diff"],
            "spearman": [coverage.spearman_source("head str/logit_diff/denoise vs gn/kl/noise", str_, "logit_diff", gn, "kl")]}


@pytest.mark.parametrize("kind", ["effect", "logit_diff"])
def test_expanded_intervals_cover_from_the_minimum_and_fail_below(sources, kind):
    need = inference.MIN_PROMPTS[kind]
    for src in sources[kind]:
        at_need = coverage.effect_coverage(src, need, reps=40, n_boot=300, seed=1)
        at_8 = coverage.effect_coverage(src, 8, reps=40, n_boot=300, seed=2)
        assert at_need["expanded"] >= 0.93, (src.name, at_need)
        assert at_8["expanded"] < 0.93, (src.name, at_8)  # below the minimum: the page withholds "significant"
        assert at_8["percentile"] < at_8["expanded"] - 0.02  # the plain percentile interval under-covers more


def test_spearman_intervals_do_not_cover_so_no_minimum_is_claimed(sources):
    assert inference.MIN_PROMPTS["spearman"] is None and not inference.significance_allowed(10**6, "spearman")
    cov = coverage.spearman_coverage(sources["spearman"][0], 64, reps=60, n_boot=150, seed=3)
    assert cov["expanded"] < 0.93, cov
