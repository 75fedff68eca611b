"""The Spec's ``method`` setting (exact, atp, atp_star, ig) and ``ig_steps``:
their cache keys (exact keys are those stored before the setting existed),
URL and CLI names, and one-line errors. The estimates themselves are tested in
tests/engine/methods/test_attribution.py."""

from __future__ import annotations

import pytest

from patching.core.errors import PatchboardError
from patching.core.spec import IG_STEPS, Spec


#: Keys of exact specs stored before ``method`` existed (computed on the
#: commit before it): they must never change, or every stored result is lost.
OLD_KEYS = {
    "default": "65598c365b1b734f1729aa47529b5d271ee816bc1a739075708f277ba9ab5bcb",
    "gn-noise": "abf608f0f3141d4d394cf94c810877f929b8dc7d7ce4a0e0865a37b4b1f2a934",
    "window": "183286f0abce51b5c979345ff0aaafa303bfb7c05e679995bf681cb1d8c73576",
}


def test_exact_keys_are_those_stored_before_the_method_setting():
    # Under the engine version they were stored with (the signed noising KL bumped it to 2 since).
    assert Spec().cache_key("fp", engine="1") == OLD_KEYS["default"]
    assert Spec(corruption="gn", direction="noise").cache_key("fp", engine="1") == OLD_KEYS["gn-noise"]
    assert Spec(component="attn_out", window=3).cache_key("fp", engine="1") == OLD_KEYS["window"]
    assert "method" not in Spec().validated().compute_dict() and "ig_steps" not in Spec().validated().compute_dict()
    # ig_steps means nothing to exact: reset, so the key stays the old one.
    assert Spec(ig_steps=17).cache_key("fp", engine="1") == OLD_KEYS["default"]


def test_method_and_ig_steps_enter_the_key_and_the_url():
    keys = {Spec(method=m).cache_key("fp") for m in ("exact", "atp", "atp_star", "ig")}
    assert len(keys) == 4
    assert Spec(method="ig", ig_steps=7).cache_key("fp") != Spec(method="ig").cache_key("fp")
    assert Spec(method="atp", ig_steps=7).cache_key("fp") == Spec(method="atp").cache_key("fp")
    assert Spec(method="ig").validated().ig_steps == IG_STEPS == 5
    q = Spec(method="ig", ig_steps=9).to_query()
    assert q["method"] == "ig" and q["ig-steps"] == "9"
    assert Spec.from_query(q) == Spec(method="ig", ig_steps=9).validated()
    assert "--method ig" in Spec(method="ig").to_cli()


def test_bad_method_and_steps_name_the_flag():
    with pytest.raises(PatchboardError) as e:
        Spec(method="eap").validated()
    assert str(e.value).startswith("method:")
    with pytest.raises(PatchboardError) as e:
        Spec(method="ig", ig_steps=0).validated()
    assert str(e.value).startswith("ig-steps:")
