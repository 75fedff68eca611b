"""The Disagreement page's first chart, the agreement per factor, written as a
plain Vega-Lite spec: no Altair import or validation before the page's first
paint (Altair costs ~0.3–0.6 s to import on a fresh server). Two small panels
(Spearman ρ, top-k overlap): a bar per factor at the mean over its pairs
(red: the lowest, the choice that changes the ranking most), the 95 %
interval as a black line, each pair of settings as a grey tick.
"""

from __future__ import annotations

import math

import pandas as pd

from patching.studies.disagreement.layout import FACTORS

BAR_TOP = "#b2182b"
BAR_OTHER = "#6b8fb5"


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def factor_bars(factors: pd.DataFrame, pairs: pd.DataFrame, k: int, width: int = 190) -> dict:
    """The chart's spec (``factors``/``pairs`` from
    :class:`patching.studies.disagreement.grid_stats.GridStats`)."""
    order = [FACTORS[f] for f in factors["factor"]]
    panels = []
    for i, (stat, title) in enumerate((("spearman", "Spearman ρ (same ranking = 1)"), ("topk_jaccard", f"top-{k} overlap (same set = 1)"))):
        bars = [{"factor": FACTORS[r["factor"]], "value": _num(r[stat]), "lo": _num(r[f"{stat}_lo"]), "hi": _num(r[f"{stat}_hi"]),
                 "pairs": int(r["n_pairs"]), "top": j == 0} for j, (_, r) in enumerate(factors.iterrows())]
        ticks = [{"factor": FACTORS[f], "value": _num(v), "a": a, "b": b}
                 for f, v, a, b in zip(pairs["factor"], pairs[stat], pairs["setting_a"], pairs["setting_b"])]
        lows = [x for x in [b["lo"] for b in bars] + [t["value"] for t in ticks] if x is not None]
        lo = min([0.0] + lows)
        x = {"field": "value", "type": "quantitative", "title": title, "scale": {"domain": [lo, 1], "nice": False}}
        y = {"field": "factor", "type": "nominal", "sort": order, "title": None,
             "axis": {"labelFontSize": 12, "labelLimit": 120} if i == 0 else None}
        tips = [{"field": "factor", "type": "nominal"}, {"field": "value", "type": "quantitative", "title": "mean over pairs", "format": ".2f"},
                {"field": "lo", "type": "quantitative", "title": "95% interval from", "format": ".2f"},
                {"field": "hi", "type": "quantitative", "title": "95% interval to", "format": ".2f"},
                {"field": "pairs", "type": "quantitative", "title": "pairs of settings"}]
        panels.append({
            "width": width, "height": {"step": 26},
            "layer": [
                {"data": {"values": bars}, "mark": {"type": "bar", "height": 16, "opacity": 0.85},
                 "encoding": {"y": y, "x": x, "tooltip": tips,
                              "color": {"condition": {"test": "datum.top", "value": BAR_TOP}, "value": BAR_OTHER}}},
                {"data": {"values": ticks}, "mark": {"type": "tick", "color": "#555", "opacity": 0.3, "thickness": 1, "size": 12},
                 "encoding": {"y": {"field": "factor", "type": "nominal", "sort": order}, "x": {"field": "value", "type": "quantitative"},
                              "tooltip": [{"field": "a", "type": "nominal", "title": "setting A"}, {"field": "b", "type": "nominal", "title": "setting B"},
                                          {"field": "value", "type": "quantitative", "format": ".3f"}]}},
                {"data": {"values": bars}, "mark": {"type": "rule", "strokeWidth": 2, "color": "#222"},
                 "encoding": {"y": {"field": "factor", "type": "nominal", "sort": order}, "x": {"field": "lo", "type": "quantitative"},
                              "x2": {"field": "hi"}, "tooltip": tips}},
            ],
        })
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "hconcat": panels, "spacing": 14,
            "config": {"view": {"stroke": None}, "axis": {"labelFontSize": 11, "titleFontSize": 11}}}
