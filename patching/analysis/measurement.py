"""Which cells of a result are measurements: the one definition every
statistic, interval, test and chart reads.

A cell is *not* a measurement when its patch cannot change anything: every
edit overwrites an activation at a position before the first token at which
the two prompts differ (the prefix both runs share; the model is causal, so
the activation there is identical in both runs). The engine skips such patches
and returns the base run, so the effect is zero by construction
(:func:`patching.methods.activation.noop_cells`, the engine's own test). On
positional components (resid_pre, attn_out, mlp_out, *_by_pos, windows) of IOI
most cells are such zeros; counted as effects they shrink the 2-SD band by
about sqrt(1 - f) for a share f of zeros, tie at the bottom of every ranking
and inflate rank correlations. So they are left out of every point statistic,
interval and test, and drawn greyed with their count, never thresholded,
ranked or correlated.

The sweep's tidy table carries the flag in its ``measured`` column
(:data:`patching.results.MEASURED`; results stored before it existed get it
from ``meta["noop_cells"]`` when read). With ``metric``, a cell whose value
is not finite (a normaliser of 0, a component nothing reads) is not a
measurement of that metric either.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.results import MEASURED

__all__ = ["MEASURED", "measured", "only_measured", "n_unmeasured", "measured_effects"]


def measured(table: pd.DataFrame, metric: str | None = None) -> pd.Series:
    """Bool Series on ``table``'s index: True where the cell is a measurement,
    False where it is zero by construction (a no-op patch) and, with
    ``metric``, where that metric's value is not finite. A table without the
    ``measured`` column (a hand-made table) is measured everywhere; the column may come back from a CSV as text ("True"/"False")."""
    if MEASURED in table.columns:
        col = table[MEASURED]
        if col.dtype == bool:
            flag = col.to_numpy()
        else:
            text = col.astype(str).str.strip().str.lower()
            flag = text.isin(("true", "1", "1.0")).to_numpy()
    else:
        flag = np.ones(len(table), dtype=bool)
    if metric is not None:
        if metric not in table.columns:
            raise ValueError(f"measured: the table has no {metric!r} column")
        flag = flag & np.isfinite(pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan))
    return pd.Series(flag, index=table.index, name=MEASURED, dtype=bool)


def only_measured(table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """The rows of ``table`` that are measurements (:func:`measured`)."""
    return table[measured(table, metric)]


def n_unmeasured(table: pd.DataFrame) -> int:
    """How many cells are zero by construction (no-op patches)."""
    return int((~measured(table)).sum())


def measured_effects(table: pd.DataFrame, metric: str, kind: bool | None = None) -> pd.Series:
    """One metric of a tidy result as an effect vector indexed by component
    label (:func:`patching.analysis.stats.effect_series`) with NaN where the
    cell is not a measurement: every statistic in :mod:`patching.analysis.stats`
    and :mod:`patching.analysis.tables` leaves non-finite effects out of its
    means, SDs, correlations and counts, so they read measurements only."""
    from patching.analysis.stats import effect_series

    out = effect_series(table, metric, kind=kind)
    out[~measured(table).to_numpy()] = np.nan
    return out
