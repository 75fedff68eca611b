"""How far an approximate sweep (attribution patching) is from the exact one.

Both tables have the same cells (component, layer, head, pos); the agreement
is read on one metric column: Pearson and Spearman correlation, the overlap
of the top-k cells by magnitude, and the cells with the largest absolute
errors. numpy/pandas/scipy only (no torch, no streamlit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

KEYS = ["component", "layer", "head", "pos"]


def aligned(approx: pd.DataFrame, exact: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per cell: the cell's keys, ``approx``, ``exact`` and ``error``."""
    a = approx[KEYS + ["pos_label", metric]].rename(columns={metric: "approx"})
    e = exact[KEYS + [metric]].rename(columns={metric: "exact"})
    both = a.merge(e, on=KEYS, how="inner")
    if len(both) != len(approx) or len(both) != len(exact):
        raise ValueError("the two results do not have the same cells")
    both["error"] = both["approx"] - both["exact"]
    return both


def agreement(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, k: int = 10, n_worst: int = 5) -> dict[str, Any]:
    """Pearson, Spearman, top-k overlap (by |value|) and the largest errors."""
    from scipy.stats import pearsonr, spearmanr

    both = aligned(approx, exact, metric)
    x, y = both["approx"].to_numpy(float), both["exact"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    const = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
    k = min(k, len(x))
    top = lambda v: set(np.argsort(-np.abs(v), kind="stable")[:k])  # noqa: E731
    worst = both.reindex(both["error"].abs().sort_values(ascending=False).index).head(n_worst)
    return {
        "metric": metric,
        "cells": int(len(x)),
        "pearson": float("nan") if const else float(pearsonr(x, y)[0]),
        "spearman": float("nan") if const else float(spearmanr(x, y)[0]),
        "k": k,
        "top_k_overlap": len(top(x) & top(y)) / k if k else float("nan"),
        "max_abs_error": float(np.abs(x - y).max()) if len(x) else float("nan"),
        "worst": worst[KEYS + ["pos_label", "approx", "exact", "error"]].reset_index(drop=True),
    }


def summary_line(a: dict[str, Any]) -> str:
    """One line for a terminal."""
    return (f"agreement with the stored exact result ({a['metric']}, {a['cells']} cells): pearson {a['pearson']:.3f}, "
            f"spearman {a['spearman']:.3f}, top-{a['k']} overlap {a['top_k_overlap']:.0%}, max |error| {a['max_abs_error']:.3g}")
