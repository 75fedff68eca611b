"""The KL effect under noising is signed (engine version 2): the corrupted run
is the reference, kl = KL(corrupt || clean) - KL(corrupt || patched), so a
component that works against the answer reads negative, as under logit_diff."""

from __future__ import annotations

import pytest
import torch

from patching.core.spec import ENGINE_VERSION
from patching.engine.metrics import baseline_warnings, baselines, effects, flipped_fraction
from patching.engine.readout import RowStats


def _stats(ld, kl, klc):
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return RowStats(ld=t(ld), prob=t([0.5] * len(ld)), logprob=t([-0.7] * len(ld)), kl=t(kl), kl_corrupt=t(klc))


def test_noise_kl_is_signed_from_the_corrupted_run():
    clean = _stats([3.0, 3.0], [0.0, 0.0], [2.0, 2.0])  # KL(corrupt || clean) = 2
    corrupt = _stats([-3.0, -3.0], [1.5, 1.5], [0.0, 0.0])
    # Patch 0 moves the clean run towards the corrupted one, patch 1 away from it.
    patched = RowStats(ld=torch.tensor([[1.0, 1.0], [4.0, 4.0]]), prob=torch.full((2, 2), 0.5), logprob=torch.full((2, 2), -0.7),
                       kl=torch.tensor([[0.3, 0.3], [0.2, 0.2]]), kl_corrupt=torch.tensor([[1.0, 1.0], [2.5, 2.5]]))
    eff = effects(patched, clean, corrupt, "noise")
    assert eff["kl"].tolist() == pytest.approx([1.0, -0.5])
    assert eff["logit_diff"].tolist() == pytest.approx([2 / 6, -1 / 6])
    assert ENGINE_VERSION == "2"


def test_baseline_guard_rails_warn_with_the_numbers():
    # Gap 0.5 against |LD_clean| 3: small; one pair of two keeps its preference.
    clean = _stats([3.0, 3.0], [0.0, 0.0], [1.0, 1.0])
    corrupt = _stats([2.0, 3.0], [0.1, 0.1], [0.0, 0.0])
    w = baseline_warnings(clean, corrupt, 2)
    assert any("gap 0.500" in x and "LD_clean 3.000" in x for x in w), w
    assert any("does not flip the preferred answer on 2 of 2" in x for x in w), w
    b = baselines(clean, corrupt, 2)
    assert b["flipped_fraction"] == 0.0 and b["clean_accuracy"] == 1.0 and b["corrupt_clean_kl"] == pytest.approx(1.0)
    ok = _stats([3.0, 2.0], [0.0, 0.0], [1.0, 1.0]), _stats([-3.0, -1.0], [1.0, 1.0], [0.0, 0.0])
    assert baseline_warnings(*ok, 2) == [] and flipped_fraction(*ok, 2) == 1.0
    # Under GN (K samples per pair, pair-major rows) the fraction is per pair.
    gn = _stats([3.0] * 4, [0.0] * 4, [1.0] * 4), _stats([-1.0, -2.0, 1.0, 2.0], [1.0] * 4, [0.0] * 4)
    assert flipped_fraction(*gn, 2) == 0.5
