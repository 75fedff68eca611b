"""patching.analysis.measurement: the one definition of which cells are
measurements (no-op patches are zero by construction and count nowhere)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from patching.analysis import measurement
from patching.core.spec import Spec
from patching.methods.activation import cells_for, noop_cells
from patching.results import MEASURED, Result


def _table(n_layers: int = 2, seq: int = 4, prefix: int = 2) -> pd.DataFrame:
    rows = []
    for l in range(n_layers):
        for p in range(seq):
            v = 0.0 if p < prefix else 0.1 * (l + 1) * (p + 1)
            rows.append({"component": "resid_pre", "layer": l, "head": pd.NA, "pos": p, "pos_label": str(p), "logit_diff": v, "prob": v / 2,
                         "logprob": v, "kl": abs(v)})
    t = pd.DataFrame(rows)
    t["head"] = t["head"].astype("Int64")
    t["pos"] = t["pos"].astype("Int64")
    return t


def test_noop_cells_are_the_engines_skipped_patches():
    cells = cells_for("resid_pre", 3, 4, 5)
    noop = noop_cells(cells, same_prefix=2, seq=5)
    assert [(cells[i].layer, cells[i].pos) for i in noop] == [(l, p) for l in range(3) for p in range(2)]
    heads = cells_for("head", 3, 4, 5)
    assert noop_cells(heads, 2, 5) == []  # a head's patch covers every position
    assert noop_cells(heads, 5, 5) == list(range(len(heads)))  # nothing differs: every patch is skipped
    windows = cells_for("mlp_out", 3, 4, 5, window=3)
    # a window is a no-op only when every layer's edit is (same position in each)
    assert noop_cells(windows, 1, 5) == [i for i, c in enumerate(windows) if c.pos == 0]


def test_result_gets_the_column_from_meta_and_keeps_its_own():
    t = _table()
    noop = [i for i, p in enumerate(t["pos"]) if p < 2]
    r = Result(spec=Spec(), table=t, baselines={}, meta={"noop_cells": noop})
    assert MEASURED in r.table.columns and MEASURED not in t.columns  # the caller's table is not modified
    assert measurement.measured(r.table).tolist() == [p >= 2 for p in t["pos"]]
    again = Result(spec=Spec(), table=r.table, baselines={}, meta={})  # a stored column wins over (absent) meta
    assert measurement.measured(again.table).equals(measurement.measured(r.table))
    plain = Result(spec=Spec(), table=_table(), baselines={}, meta={})
    assert measurement.measured(plain.table).all()
    # Path sweeps too: a sender whose write difference is exactly zero is the base run (patching/methods/paths.py).
    paths = Result(spec=Spec(), table=pd.DataFrame({"x": [1.0, 2.0]}), baselines={}, meta={"noop_cells": [0]}, kind="paths")
    assert measurement.measured(paths.table).tolist() == [False, True]
    hyp = Result(spec=Spec(), table=pd.DataFrame({"x": [1.0]}), baselines={}, kind="hypothesis")
    assert MEASURED not in hyp.table.columns


def test_measured_is_index_aligned_bool_and_reads_text_and_metric():
    t = _table()
    t.index = t.index + 100
    t[MEASURED] = t["pos"] >= 2
    m = measurement.measured(t)
    assert m.dtype == bool and m.index.equals(t.index) and m.sum() == 4
    t.loc[t.index[-1], "logit_diff"] = np.nan
    assert measurement.measured(t, "logit_diff").sum() == 3 and measurement.measured(t, "prob").sum() == 4
    csv = t.astype({MEASURED: str})  # a CSV round trip gives text
    assert measurement.measured(csv).equals(measurement.measured(t))
    assert measurement.measured(_table()).all()  # no column: every cell is a measurement
    assert measurement.n_unmeasured(t) == 4
    assert measurement.only_measured(t, "logit_diff").index.tolist() == [102, 103, 106]
    with pytest.raises(ValueError, match="no 'nope' column"):
        measurement.measured(t, "nope")


def test_measured_effects_are_nan_at_no_ops():
    t = _table()
    t[MEASURED] = t["pos"] >= 2
    e = measurement.measured_effects(t, "logit_diff")
    assert list(e.index[:2]) == ["L0P0", "L0P1"]
    assert e.isna().tolist() == (t["pos"] < 2).tolist()
    assert np.allclose(e.dropna().to_numpy(), t.loc[t[MEASURED], "logit_diff"].to_numpy())
