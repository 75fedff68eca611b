"""The signed noising KL (patching/engine/metrics.py) on the embedded model: a
head that works against the answer reads negative under kl, as under
logit_diff (the formula on hand-made rows: tests/unit/engine/test_metrics.py)."""

from __future__ import annotations

import pytest

from patching.core.spec import Spec


@pytest.fixture(scope="module")
def noised_heads(embedded):
    from patching import service

    spec = Spec(task="ioi", ioi_corrupt="s2", n_pairs=6, seed=0, corruption="str", direction="noise", component="head")
    return service.run(spec, lm=embedded, use_store=False)


def test_a_negative_head_reads_negative_under_noise_kl(noised_heads):
    t = noised_heads.table
    worst = t.loc[t["logit_diff"].idxmin()]
    assert float(worst["logit_diff"]) < -0.1, "the embedded model has a clearly negative head under noising"
    assert float(worst["kl"]) < 0, (int(worst["layer"]), int(worst["head"]), float(worst["kl"]))
    # Every clearly negative head is negative under kl too, every clearly positive one positive.
    neg, pos = t[t["logit_diff"] < -0.05], t[t["logit_diff"] > 0.05]
    assert len(neg) >= 1 and (neg["kl"] < 0).all()
    assert len(pos) >= 1 and (pos["kl"] > 0).all()
    assert noised_heads.baselines["corrupt_clean_kl"] > 0
