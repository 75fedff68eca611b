"""Resample ablation without a model: the seeded index of the other prompts
(patching/engine/reference.py) and the Spec's refusal of a one-pair resample
(the sweeps themselves: tests/engine/engine/test_reference.py)."""

from __future__ import annotations

import pytest
import torch

from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.engine.reference import resample_index


def test_resample_index_never_picks_the_prompt_itself():
    idx = resample_index(5, 40, seed=3).reshape(5, 40)
    assert all((idx[i] != i).all() for i in range(5))
    assert set(idx.flatten().tolist()) == set(range(5))
    assert torch.equal(resample_index(5, 40, seed=3), resample_index(5, 40, seed=3))
    assert not torch.equal(resample_index(5, 40, seed=3), resample_index(5, 40, seed=4))
    with pytest.raises(PatchboardError, match="at least 2 pairs"):
        resample_index(1, 4, 0)


def test_resample_with_one_pair_is_refused_before_any_work():
    with pytest.raises(PatchboardError, match="at least 2 pairs"):
        Spec(task="ioi", n_pairs=1, corruption="resample").validated()
    assert Spec(task="ioi", n_pairs=2, corruption="resample", noise_samples=4).validated().noise_samples == 4
    assert Spec(task="ioi", n_pairs=2, corruption="str", noise_samples=4).validated().noise_samples == 10  # reset: unused
