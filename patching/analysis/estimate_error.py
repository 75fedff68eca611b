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


#: A value counts as signed when |value| exceeds this share of the exact
#: sweep's largest |value| (below it, a sign is float noise, not a claim).
SIGN_REL_EPS = 0.02


def sign_flags(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, rel_eps: float = SIGN_REL_EPS,
               method: str | None = None) -> pd.DataFrame:
    """Every cell with ``flip``: the estimate and exact patching give
    opposite signs, both past ``rel_eps`` × the largest |exact| (so a flip
    is a claim the estimate gets backwards, not noise around zero), on cells
    measured in both (``measured``, from :func:`aligned`). An unsigned
    ``method`` (AtP*: a magnitude) claims no sign, so it flips nowhere."""
    both = aligned(approx, exact, metric)
    x, y = both["approx"].to_numpy(float), both["exact"].to_numpy(float)
    scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
    eps = rel_eps * scale
    with np.errstate(invalid="ignore"):
        both["flip"] = (np.abs(x) > eps) & (np.abs(y) > eps) & (np.sign(x) != np.sign(y)) & both["measured"].to_numpy()
    if method in UNSIGNED_METHODS:
        both["flip"] = False
    both["eps"] = eps
    return both


def flips_by_position(flags: pd.DataFrame) -> pd.DataFrame:
    """Per position (all positions together where the sweep has none): cells,
    sign flips, and the estimate's Pearson correlation with exact there, so
    "poor at the replaced name, fine elsewhere" reads off one table. Cells
    zero by construction (patching.analysis.measurement) are left out, and
    positions with none measured too."""
    rows = []
    keyed = flags[flags["measured"]] if "measured" in flags else flags
    keyed = keyed.assign(pos_key=keyed["pos"].astype("Int64").fillna(-1))
    for pos, g in keyed.groupby("pos_key", sort=True):
        x, y = g["approx"].to_numpy(float), g["exact"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        r = float(np.corrcoef(x, y)[0, 1]) if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
        flipped = g[g["flip"]]
        rows.append({"pos": None if pos == -1 else int(pos), "pos_label": str(g["pos_label"].iloc[0] or ""), "cells": int(len(g)),
                     "flips": int(g["flip"].sum()), "pearson": r,
                     "layers": ",".join(str(int(v)) for v in sorted(flipped["layer"].dropna().unique()))})
    return pd.DataFrame(rows)


def sign_note(flags: pd.DataFrame, method: str) -> str | None:
    """One plain sentence naming where the estimate has the wrong sign
    (position and layers), or None when it never does."""
    n = int(flags["flip"].sum())
    if not n:
        return None
    by = flips_by_position(flags)
    where = [f"{(r['pos_label'] or '').strip() or ('position ' + str(r['pos']) if r['pos'] is not None else 'all positions')}"
             f" (layer{'s' if ',' in r['layers'] else ''} {r['layers']}; correlation there {r['pearson']:.2f})"
             for r in by.to_dict("records") if r["flips"]]
    return (f"{method} has the opposite sign to exact patching in {n} of {len(flags)} cells: at " + "; ".join(where[:6])
            + (" …" if len(where) > 6 else "") + ". Read those cells from the exact sweep.")
