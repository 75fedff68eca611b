"""Where an estimate disagrees in sign with exact patching
(patching/analysis/estimate_error.py: sign_flags, flips_by_position, sign_note)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.analysis.estimate_error import flips_by_position, sign_flags, sign_note


def _table(values: dict[tuple[int, int], float]) -> pd.DataFrame:
    rows = [{"component": "resid_pre", "layer": l, "head": None, "pos": p, "pos_label": {0: "BOS", 1: "S2", 2: "END"}[p], "logit_diff": v}
            for (l, p), v in values.items()]
    t = pd.DataFrame(rows)
    for c in ("layer", "head", "pos"):
        t[c] = t[c].astype("Int64")
    return t


EXACT = {(l, p): v for (l, p), v in zip([(l, p) for l in range(3) for p in range(3)], [0.0, 0.9, 0.2, 0.0, 0.5, 0.3, 0.0, 0.99, 0.4])}


def test_flags_only_real_sign_disagreements():
    approx = dict(EXACT)
    approx[(2, 1)] = -0.38      # Gemma's mlp_out at layer 3: exact 0.99, estimate -0.38
    approx[(0, 0)] = -1e-6      # noise around zero is no claim
    approx[(1, 2)] = 0.31       # same sign, other size: an error, not a flip
    f = sign_flags(_table(approx), _table(EXACT), "logit_diff")
    assert list(f.loc[f["flip"], ["layer", "pos"]].itertuples(index=False, name=None)) == [(2, 1)]
    by = flips_by_position(f).set_index("pos")
    assert by.loc[1, "flips"] == 1 and by.loc[1, "layers"] == "2" and by.loc[2, "flips"] == 0
    assert by.loc[1, "pearson"] == np.corrcoef([0.9, 0.5, -0.38], [0.9, 0.5, 0.99])[0, 1]
    note = sign_note(f, "AtP")
    assert note.startswith("AtP has the opposite sign to exact patching in 1 of 9 cells: at S2 (layer 2;")


def test_no_flip_no_note():
    f = sign_flags(_table(EXACT), _table(EXACT), "logit_diff")
    assert not f["flip"].any() and sign_note(f, "AtP") is None


def test_cells_zero_by_construction_are_left_out():
    exact, approx = _table(EXACT), _table({k: (-v if k[1] == 0 else v) for k, v in EXACT.items()})
    exact["measured"] = exact["pos"] != 0  # BOS: before the first difference, a no-op patch
    approx.loc[approx["pos"] == 0, "logit_diff"] = -0.5  # even a large estimate there is no claim against exact's 0
    exact.loc[exact["pos"] == 0, "logit_diff"] = 0.0
    f = sign_flags(approx, exact, "logit_diff")
    assert not f["flip"].any()
    assert 0 not in set(flips_by_position(f)["pos"])
