"""``method`` as a dimension of the disagreement grid: ``setting@atp`` beside
the exact setting, read like any other setting; the default grid (its
settings, sweeps and keys) unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patching.analysis import stats
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text as disagreement_text

BASE = Spec(model="smollm2-135m", task="ioi", n_pairs=2, seed=0, component="head", noise_samples=2)
FACTS = Spec(task="facts", component="head")


def test_default_grid_and_its_keys_are_unchanged():
    specs = disagreement_grid.grid_specs(BASE)
    assert len(specs) == 36 and all("@" not in s for s in specs) and all(sp.method == "exact" for sp in specs.values())
    for s, sp in specs.items():
        p = stats.parse_setting(s)
        old = replace(BASE, corruption=p["corruption"], metric=p["metric"], direction=p["direction"], ioi_corrupt=p["variant"]).validated()
        assert sp.cache_key("fp") == old.cache_key("fp")
    # A base spec's own method does not leak into the grid: settings say it.
    assert all(sp.method == "exact" for sp in disagreement_grid.grid_specs(BASE.with_(method="atp")).values())
    assert "--method" not in disagreement_text.cli_command(BASE, disagreement_grid.default_settings(BASE))


def test_method_suffix_parses_and_computes_its_own_sweep():
    got = disagreement_grid.parse_settings("str/logit_diff/denoise@atp, str/logit_diff/denoise@exact, gn/kl/noise@ig", FACTS)
    assert got == ["str/logit_diff/denoise@atp", "str/logit_diff/denoise", "gn/kl/noise@ig"]
    specs = disagreement_grid.grid_specs(FACTS, got)
    assert specs["str/logit_diff/denoise@atp"].method == "atp" and specs["gn/kl/noise@ig"].ig_steps == 5
    assert len(disagreement_grid.sweeps_of(specs)) == 3  # the estimate is a sweep of its own
    assert disagreement_grid.parse_settings("*/prob/denoise@atp_star", FACTS) == ["str/prob/denoise@atp_star", "gn/prob/denoise@atp_star"]
    assert stats.parse_setting("str/kl/noise/s2@atp") == {"corruption": "str", "metric": "kl", "direction": "noise", "variant": "s2", "method": "atp"}
    assert stats._differs_in("str/kl/noise@atp", "str/kl/noise") == "method"
    assert stats._differs_in("str/kl/noise@atp", "gn/kl/noise") == "corruption,method"


@pytest.mark.parametrize("text, field", [("str/kl/noise@eap", "settings"), ("str/kl/noise@", "settings")])
def test_bad_methods_name_the_field(text, field):
    with pytest.raises(PatchboardError) as e:
        disagreement_grid.parse_settings(text, FACTS)
    assert e.value.field == field


def test_with_method_and_the_cli_line():
    plain = disagreement_grid.default_settings(FACTS)
    both = disagreement_grid.with_method(plain, "atp")
    assert len(both) == 24 and both[:2] == [plain[0], plain[0] + "@atp"]
    assert disagreement_grid.with_method(plain, "exact") == plain
    cmd = disagreement_text.cli_command(FACTS, both)
    assert "--method atp" in cmd and "--settings" not in cmd
    two = ["str/logit_diff/denoise", "str/logit_diff/denoise@ig"]
    assert "--method ig" in disagreement_text.cli_command(FACTS, two) and "--settings str/logit_diff/denoise " in disagreement_text.cli_command(FACTS, two)
