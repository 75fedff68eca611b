"""The 2-SD rule (Zhang & Nanda) applied to one result's table: each
component's label, value, z and whether it is detected, and the strongest
components (no streamlit import; the rule itself is
:func:`patching.analysis.stats.detect`). The rule's mean and SD are over the
measurements only (:func:`patching.analysis.measurement.measured`): a cell
that is zero by construction gets no z, is never detected and never listed.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from patching.analysis.measurement import MEASURED, measured
from patching.analysis.stats import detect


def component_label(layer: Any, head: Any = None, pos: Any = None) -> str:
    parts = [f"L{int(layer)}"]
    if head is not None and not pd.isna(head):
        parts.append(f"H{int(head)}")
    if pos is not None and not pd.isna(pos):
        parts.append(f"P{int(pos)}")
    return "".join(parts)


def with_detection(table: pd.DataFrame, metric: str, k: float = 2.0, by: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The table with ``label``, ``value`` (the metric), ``measured``, ``z``,
    ``detected`` ("positive"/"negative"/"") by the k-SD rule over the measured
    cells (the others: z NaN, never detected); and the rule's thresholds.
    With ``by`` (e.g. "component": heads and MLPs have different scales) the
    rule runs within each group, and the thresholds are ``{group: {...}}``."""
    t = table.copy()
    t["label"] = [component_label(l, h, p) for l, h, p in zip(t["layer"], t["head"], t["pos"])]
    t["value"] = pd.to_numeric(t[metric], errors="coerce").astype(float)
    t[MEASURED] = measured(table).to_numpy()
    live = t["value"].where(t[MEASURED])  # the rule sees measurements only (NaN is left out of its mean and SD)
    if by is None:
        det = detect(live.reset_index(drop=True), k=k)
        t["z"] = det["z"].to_numpy()
        t["detected"] = det["sign"].to_numpy()
        return t, dict(det.attrs)
    t["z"], t["detected"] = float("nan"), ""
    out: dict = {}
    for g, idx in t.groupby(by, sort=False).groups.items():
        det = detect(live.loc[idx].reset_index(drop=True), k=k)
        t.loc[idx, "z"] = det["z"].to_numpy()
        t.loc[idx, "detected"] = det["sign"].to_numpy()
        out[g] = dict(det.attrs)
    return t, out


def top_components(t: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """The ``n`` measured components with the largest |value| (t from
    with_detection; a cell that is zero by construction is never listed)."""
    live = t["value"].where(t[MEASURED]) if MEASURED in t.columns else t["value"]
    order = live.dropna().abs().sort_values(ascending=False, kind="stable").index[:n]
    out = t.loc[order]
    cols = ["label", "layer", "head", "pos", "pos_label", "value", "value_lo", "value_hi", "z", "detected", "detect_stability"]
    cols = [c for c in cols if c in out.columns and not (c in ("head", "pos", "pos_label") and out[c].isna().all())]
    if "pos_label" in cols and (out["pos_label"] == "").all():
        cols.remove("pos_label")
    return out[cols].reset_index(drop=True)
