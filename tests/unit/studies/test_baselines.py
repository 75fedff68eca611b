"""Baselines at the same number of paths (patching/studies/baselines.py): the
same paths with no heads, and random head sets of the same size, matched in
layer order; no model needed to build them."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from patching.core.errors import PatchboardError
from patching.methods.graph import Geometry
from patching.methods.hypothesis_format import parse
from patching.studies import baselines
from tests.helpers import ROOT

GEO = Geometry(30, 9, 3)


@pytest.fixture(scope="module")
def ioi():
    return json.loads((ROOT / "examples" / "ioi.json").read_text())


def test_heads_and_the_no_heads_baseline(ioi):
    heads = baselines.heads_of(ioi)
    assert heads == sorted({tuple(int(x) for x in d["head"].split(".")) for d in ioi["derived"]["heads"]})
    none = baselines.substitute(ioi, None, "no heads")
    assert baselines.heads_of(none) == []
    got = parse(none, GEO)
    want = parse({"paths": [{"sender": ["embed", "mlp*"], "receiver": ["mlp*", "logits"]}]}, GEO)
    assert got.canonical() == want.canonical()  # the same MLP paths, no head


def test_random_head_sets_keep_size_order_and_avoid_the_hypothesis(ioi):
    heads = baselines.heads_of(ioi)
    full = parse(ioi, GEO)
    seen = set()
    for kind, h in baselines.baseline_hypotheses(ioi, 30, 9, n_random=20, seed=4)[1:]:
        assert kind == "random heads"
        got = baselines.heads_of(h)
        assert len(got) == len(heads) and not set(got) & set(heads)
        p = parse(h, GEO)
        # the same template around other heads: the same number of paths through k heads (up to layer order)
        assert abs(len(p.edges) - len(full.edges)) <= len(full.edges) * 0.5
        seen.add(tuple(got))
    assert len(seen) == 20
    draws = lambda n: [baselines.heads_of(h) for _, h in baselines.baseline_hypotheses(ioi, 30, 9, n_random=n, seed=4)[1:]]  # noqa: E731
    assert draws(3) == draws(20)[:3]  # seeded: the same sets, whatever their number
    m = baselines.random_mapping([(3, 1), (20, 2)], 30, 9, random.Random(0))
    assert m[(3, 1)] <= m[(20, 2)]  # matched in layer order


def test_wildcard_heads_are_refused():
    with pytest.raises(PatchboardError, match="one by one"):
        baselines.heads_of({"paths": [{"sender": "3.*", "receiver": "logits"}]})
    with pytest.raises(PatchboardError, match="names no head"):
        baselines.baseline_hypotheses({"paths": [{"sender": "embed", "receiver": "logits"}]}, 30, 9)


def test_summary_by_hand():
    t = pd.DataFrame({"kind": ["hypothesis", "no heads"] + ["random heads"] * 4, "pe_kl": [0.8, 0.5, 0.55, 0.6, 0.85, 0.52]})
    s = baselines.baselines_summary(t)
    assert s["heads_add"] == pytest.approx(0.3) and s["random_median"] == pytest.approx(0.575)
    assert s["p_random"] == pytest.approx((1 + 1) / 5)  # one random set does as well
    assert "+30.0 points" in baselines.summary_sentence(s)
