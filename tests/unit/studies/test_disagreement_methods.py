"""``method`` as a dimension of the disagreement grid: ``setting@atp`` beside
the exact setting, read like any other setting; the default grid (its
settings, sweeps and keys) unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patching.analysis import stats as S
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
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
