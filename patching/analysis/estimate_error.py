"""How far an approximate sweep (attribution patching) is from the exact one.

Both tables have the same cells (component, layer, head, pos); the agreement
is read on one metric column, over the cells that are measurements in both
(:func:`patching.analysis.measurement.measured`: a no-op cell is 0 in both by
construction and would only inflate the agreement): Pearson and Spearman
correlation, the overlap of the top-k cells by magnitude, and the cells with
the largest absolute errors. An unsigned method (AtP*, whose GradDrop
estimates |effect|) is compared with |exact|. numpy/pandas/scipy only (no
torch, no streamlit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from patching.analysis.measurement import measured
from patching.results import UNSIGNED_METHODS

KEYS = ["component", "layer", "head", "pos"]


def aligned(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, method: str | None = None) -> pd.DataFrame:
    """One row per cell: the cell's keys, ``approx``, ``exact``, ``error`` and
    ``measured`` (a measurement in both). With an unsigned ``method`` (AtP*)
    both columns are magnitudes: |estimate| against |exact|."""
    a = approx[KEYS + ["pos_label", metric]].rename(columns={metric: "approx"}).assign(_ma=measured(approx).to_numpy())
    e = exact[KEYS + [metric]].rename(columns={metric: "exact"}).assign(_me=measured(exact).to_numpy())
    both = a.merge(e, on=KEYS, how="inner")
    if len(both) != len(approx) or len(both) != len(exact):
        raise ValueError("the two results do not have the same cells")
    if method in UNSIGNED_METHODS:
        both["approx"], both["exact"] = both["approx"].abs(), both["exact"].abs()
    both["error"] = both["approx"] - both["exact"]
    both["measured"] = both.pop("_ma") & both.pop("_me")
    return both


def agreement(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, k: int = 10, n_worst: int = 5,
              method: str | None = None) -> dict[str, Any]:
    """Pearson, Spearman, top-k overlap (by |value|) and the largest errors,
    over the cells measured in both; ``unmeasured`` counts the others.
    ``method``: the approximation's (AtP* is compared as |estimate| with |exact|)."""
    from scipy.stats import pearsonr, spearmanr

    both = aligned(approx, exact, metric, method)
    unmeasured = int((~both["measured"]).sum())
    both = both[both["measured"]].reset_index(drop=True)
    x, y = both["approx"].to_numpy(float), both["exact"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    both = both[ok].reset_index(drop=True)
    x, y = x[ok], y[ok]
    const = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
    k = min(k, len(x))
    top = lambda v: set(np.argsort(-np.abs(v), kind="stable")[:k])  # noqa: E731
    worst = both.reindex(both["error"].abs().sort_values(ascending=False).index).head(n_worst)
    return {
        "metric": metric,
        "unsigned": method in UNSIGNED_METHODS,
        "cells": int(len(x)),
        "unmeasured": unmeasured,
        "pearson": float("nan") if const else float(pearsonr(x, y)[0]),
        "spearman": float("nan") if const else float(spearmanr(x, y)[0]),
        "k": k,
        "top_k_overlap": len(top(x) & top(y)) / k if k else float("nan"),
        "max_abs_error": float(np.abs(x - y).max()) if len(x) else float("nan"),
        "worst": worst[KEYS + ["pos_label", "approx", "exact", "error"]].reset_index(drop=True),
    }


def summary_line(a: dict[str, Any]) -> str:
    """One line for a terminal."""
    what = f"|{a['metric']}|, magnitudes" if a.get("unsigned") else a["metric"]
    skipped = f", {a['unmeasured']} zero by construction left out" if a.get("unmeasured") else ""
    return (f"agreement with the stored exact result ({what}, {a['cells']} cells{skipped}): pearson {a['pearson']:.3f}, "
            f"spearman {a['spearman']:.3f}, top-{a['k']} overlap {a['top_k_overlap']:.0%}, max |error| {a['max_abs_error']:.3g}")
