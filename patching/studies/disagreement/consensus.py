"""What stays the same across a grid: each component's effect under every
setting with its interval and detection, the stable core detected under
(nearly) every setting, and the setting-specific fringe.

:func:`cells` builds the component × setting table once per grid (stored
with the grid's statistics); the rest reads it:

* ``effect`` — the sweep's value; ``lo``/``hi`` — the ``level`` expanded
  percentile interval over resamples of the prompts;
* ``z`` and ``detected`` — Zhang & Nanda's 2-SD rule over the measurement
  cells of that setting (+1 above the band, −1 below, 0 inside);
* ``stability`` — the share of resamples in which the rule detects it;
  ``significant`` — detected, ``stability`` ≥ ``level``, and the grid has
  enough prompts for its intervals to cover (withheld below, as every
  "significant" label is: :func:`patching.analysis.inference.significance_allowed`);
* ``measured`` — False for cells zero by construction (never ranked,
  thresholded or counted; drawn greyed).

A component is in the **core** when it is detected under at least
:data:`CORE_SHARE` of the settings, in the **fringe** when under some.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from patching.analysis import inference, uncertainty
from patching.analysis.stats import _natural_key, detect
from patching.studies.disagreement import layout
from patching.studies.disagreement.robust import GridSamples

#: "Nearly every setting": a component detected under at least this share of the settings is in the core.
CORE_SHARE = 0.9
CELL_COLUMNS = ["component", "setting", "effect", "lo", "hi", "z", "detected", "stability", "significant", "measured"]


def cells(effects: dict[str, pd.Series], gs: GridSamples | None, level: float = 0.95, k: float = 2.0) -> pd.DataFrame:
    """The component × setting table (:data:`CELL_COLUMNS`), settings in the
    order of ``effects`` (NaN where a cell is not a measurement:
    :meth:`patching.studies.disagreement.grid.Grid.effects`); intervals,
    stability and significance NaN/False for a setting without resamples
    (not in ``gs``). ``significant`` also needs enough prompts for the
    intervals to cover (:func:`patching.analysis.inference.significance_allowed`)."""
    allowed = gs is not None and inference.significance_allowed(gs.n_prompts, "effect")
    frames = []
    for s, eff in effects.items():
        m = np.isfinite(eff.to_numpy(dtype=float))
        if gs is not None and s in gs.measured:
            m &= gs.measured[s]
        d = detect(eff[m], k)
        z = d["z"].reindex(eff.index)
        sign = d["sign"].reindex(eff.index)
        det = np.where(sign == "positive", 1, np.where(sign == "negative", -1, 0))
        lo = hi = stab = np.full(len(eff), np.nan)
        if gs is not None and s in gs.boot:
            b = gs.boot[s].astype(float)
            lo, hi = inference.interval(b, gs.n_prompts, level, axis=1)
            lo, hi = np.where(m, lo, np.nan), np.where(m, hi, np.nan)
            stab = uncertainty.detection_frequency(b, k, live=m)
        frames.append(pd.DataFrame({"component": eff.index.astype(str), "setting": s, "effect": eff.to_numpy(dtype=float), "lo": lo, "hi": hi,
                                    "z": z.to_numpy(dtype=float), "detected": det.astype(np.int64), "stability": stab,
                                    "significant": (det != 0) & (stab >= level) & allowed, "measured": m}))
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return pd.concat(frames, ignore_index=True)[CELL_COLUMNS]


def components(cell_table: pd.DataFrame, core_share: float = CORE_SHARE, level: float = 0.95) -> pd.DataFrame:
    """One row per component detected under at least one setting:
    ``component, n_settings, n_detected, n_positive, n_negative,
    n_stable (detected in at least ``level`` of the resamples), n_significant,
    share, mean_abs_z, group`` ("core" / "fringe"), sorted
    core first, then by how many settings detect it and by mean |z|."""
    c = cell_table[cell_table["measured"]]
    if c.empty:
        return pd.DataFrame(columns=["component", "n_settings", "n_detected", "n_positive", "n_negative", "n_stable", "n_significant",
                                     "share", "mean_abs_z", "group"])
    c = c.assign(pos=c["detected"] > 0, neg=c["detected"] < 0, det=c["detected"] != 0, az=c["z"].abs())
    c = c.assign(stable=c["det"] & (c["stability"] >= level))
    g = c.groupby("component", sort=False)
    out = pd.DataFrame({"n_settings": g.size(), "n_detected": g["det"].sum(), "n_positive": g["pos"].sum(), "n_negative": g["neg"].sum(),
                        "n_stable": g["stable"].sum(), "n_significant": g["significant"].sum(), "mean_abs_z": g["az"].mean()}).reset_index()
    out = out[out["n_detected"] > 0].copy()
    out["share"] = out["n_detected"] / out["n_settings"]
    out["group"] = np.where(out["share"] >= core_share, "core", "fringe")
    out["_nat"] = out["component"].map(_natural_key)
    out = out.sort_values(["group", "n_detected", "mean_abs_z", "_nat"], ascending=[True, False, False, True], kind="stable")
    cols = ["component", "n_settings", "n_detected", "n_positive", "n_negative", "n_stable", "n_significant", "share", "mean_abs_z", "group"]
    return out[cols].reset_index(drop=True).astype({"n_settings": int, "n_detected": int, "n_positive": int, "n_negative": int,
                                                     "n_stable": int, "n_significant": int})


def matrix(cell_table: pd.DataFrame, top: int = 30, core_share: float = CORE_SHARE) -> pd.DataFrame:
    """The consensus matrix's cells: the ``top`` components of
    :func:`components` × every setting, with the layout (block, short,
    order) and each component's ``rank``, ``group`` and ``n_detected``."""
    comps = components(cell_table, core_share).head(int(top))
    lay = layout.layout(list(dict.fromkeys(cell_table["setting"])))[["setting", "order", "block", "short"]]
    m = cell_table[cell_table["component"].isin(comps["component"])].merge(lay, on="setting")
    m = m.merge(comps[["component", "group", "n_detected", "n_settings"]].assign(rank=range(len(comps))), on="component")
    m["row"] = m["component"] + "  " + m["n_detected"].astype(str) + "/" + m["n_settings"].astype(str)
    return m.sort_values(["rank", "order"]).reset_index(drop=True)


def detail(cell_table: pd.DataFrame, component: str) -> pd.DataFrame:
    """One component's cells under every setting, in drawing order, with the
    layout columns, ``panel`` (its metric: a chart panel each, as their units
    differ) and ``x`` (the other factors' short values); empty if unknown."""
    c = cell_table[cell_table["component"] == component]
    lay = layout.layout(list(dict.fromkeys(cell_table["setting"])))
    others = [f for f in layout.NESTING if f != "metric" and f in layout.varying(list(lay["setting"]))]
    lay["panel"] = lay["metric"]
    lay["x"] = [" · ".join(layout.SHORT.get(r[f], r[f]) for f in others) or r["setting"] for _, r in lay.iterrows()]
    return c.merge(lay, on="setting").sort_values("order").reset_index(drop=True)


def decided_by(cell_table: pd.DataFrame, factor: str, min_gap: float = 0.5) -> pd.DataFrame:
    """Fringe components whose detection follows ``factor``: per component,
    the level of ``factor`` under which it is detected most often and the
    one least often (``best``, ``best_rate``, ``best_n``, ``worst``, ...),
    their detection stabilities (mean over those settings), and ``gap``
    (best_rate − worst_rate) ≥ ``min_gap``; largest gap first."""
    c = cell_table[cell_table["measured"]].copy()
    if c.empty:
        return pd.DataFrame()
    lay = layout.layout(list(dict.fromkeys(cell_table["setting"])))[["setting", factor]]
    c = c.merge(lay, on="setting")
    c["det"] = c["detected"] != 0
    g = c.groupby(["component", factor], sort=False)
    rates = g["det"].mean().unstack()
    if rates.shape[1] < 2:
        return pd.DataFrame()
    n, n_det, stab = g["det"].size().unstack(), g["det"].sum().unstack(), g["stability"].mean().unstack()
    best, worst = rates.idxmax(axis=1), rates.idxmin(axis=1)
    pick = lambda t, col: t.to_numpy()[np.arange(len(t)), t.columns.get_indexer(col)]  # noqa: E731
    out = pd.DataFrame({"component": rates.index.astype(str), "best": best.to_numpy(), "best_rate": pick(rates, best), "best_n": pick(n, best),
                        "best_detected": pick(n_det, best), "best_stability": pick(stab, best), "worst": worst.to_numpy(),
                        "worst_rate": pick(rates, worst), "worst_n": pick(n, worst), "worst_detected": pick(n_det, worst),
                        "worst_stability": pick(stab, worst)})
    out["gap"] = out["best_rate"] - out["worst_rate"]
    out = out[out["gap"] >= min_gap].astype({"best_n": int, "best_detected": int, "worst_n": int, "worst_detected": int})
    if out.empty:
        return out.reset_index(drop=True)
    out["_nat"] = out["component"].map(_natural_key)
    return out.sort_values(["gap", "best_rate", "_nat"], ascending=[False, False, True], kind="stable").drop(columns="_nat").reset_index(drop=True)
