"""The Disagreement page's grid charts (Altair; no streamlit, no statistics:
every number comes from ``patching.studies.disagreement``):

(The first chart, the agreement per factor, is a plain spec: :mod:`ui.answer_chart`.)

* :func:`grouped_matrix` — one statistic between every pair of settings,
  settings grouped in blocks by factor with headers and short labels (the
  full setting in the tooltip);
* :func:`consensus_matrix` — the top components × settings: z of the 2-SD
  rule, detections outlined, significant ones dotted, a click picks a component;
* :func:`component_effects` — one component's effect under every setting with
  its interval, a panel per metric.
"""

from __future__ import annotations

import json

import altair as alt
import pandas as pd

DETECT_STROKE = {1: "#111111", -1: "#d6007e"}
STAT_TITLES = {"spearman": "Spearman ρ", "kendall": "Kendall τ", "topk_jaccard": "Top-k overlap (Jaccard)", "sign_flips": "Sign flips"}


def _data(df: pd.DataFrame) -> alt.InlineData:
    """A table as inline records (NaN as null): a 72-setting matrix has 5,184
    cells, past Altair's default 5,000-row guard for DataFrames."""
    return alt.InlineData(values=df.astype(object).where(df.notna(), None).to_dict("records"))


def _label_expr(names: dict[str, str]) -> str:
    """A Vega expression mapping an axis value (a full setting) to its short label."""
    return f"{json.dumps(names)}[datum.value] || datum.value"


def _headers(lay: pd.DataFrame, field: str, x: bool, cell: int) -> list:
    """Block headers and separators of a settings axis. Along x, when a
    block is named by two or more factors, the outermost one heads its
    blocks on a line of its own (``s1_io`` over ``exact · str``, ``exact · gn``)."""
    starts = lay[lay["block_start"] & (lay["block"] != "")]
    if starts.empty:
        return []
    order = list(lay["setting"])
    h = pd.DataFrame({field: starts["setting"].to_numpy(dtype=object), "block": starts["block"].to_numpy(dtype=object)})
    sizes = lay.groupby("block", sort=False).size()
    pos = (alt.X if x else alt.Y)(f"{field}:N", sort=order, bandPosition=0)
    out = []
    rules = h.iloc[1:]
    if len(rules):
        out.append(alt.Chart(rules).mark_rule(color="#333", strokeWidth=1.2).encode(**({"x": pos} if x else {"y": pos})))
    font = 9 if cell < 12 else 10
    if not x:
        out.append(alt.Chart(h).mark_text(align="right", baseline="top", dx=-62, dy=2, fontSize=font, fontWeight="bold")
                   .encode(y=pos, x=alt.value(0), text="block:N"))
        return out
    parts = h["block"].str.split(" · ")
    two = parts.map(len).min() >= 2 and int(sizes.min()) * cell < 7 * font * max(len(b) for b in h["block"]) / 10
    if two:
        h["outer"], h["inner"] = parts.str[0], parts.str[1:].str.join(" · ")
        outer = h[h["outer"].ne(h["outer"].shift())]
        out.append(alt.Chart(outer).mark_text(align="left", baseline="bottom", dx=1, dy=-16, fontSize=font + 1, fontWeight="bold")
                   .encode(x=pos, y=alt.value(0), text="outer:N"))
    else:
        h["inner"] = h["block"]
    out.append(alt.Chart(h).mark_text(align="left", baseline="bottom", dx=1, dy=-3, fontSize=font, fontWeight="bold" if not two else "normal",
                                      limit=max(20, cell * int(sizes.min()) - 3))
               .encode(x=pos, y=alt.value(0), text="inner:N", tooltip=alt.Tooltip("block:N", title="block")))
    return out


def _cell_size(n: int) -> int:
    return 14 if n <= 40 else (10 if n <= 80 else 7)


def grouped_matrix(m: pd.DataFrame, stat: str, lay: pd.DataFrame, k: int = 10) -> alt.LayerChart:
    """``stat`` between every pair of settings (``m``: setting_a, setting_b,
    value and optionally ``lo``, ``hi``, ``floor_a``, ``floor_b``,
    ``differs_in``), ordered and blocked by ``lay`` (the layout)."""
    order = list(lay["setting"])
    names = dict(zip(lay["setting"], lay["short"]))
    cell = _cell_size(len(order))
    if stat in ("spearman", "kendall"):
        scale = alt.Scale(scheme="redblue", domain=[-1, 1])
    elif stat == "topk_jaccard":
        scale = alt.Scale(scheme="blues", domain=[0, 1])
    else:
        scale = alt.Scale(scheme="oranges", domainMin=0)
    title = STAT_TITLES[stat].replace("Top-k", f"Top-{k}")
    ax = dict(labelExpr=_label_expr(names), labelOverlap=False, labelFontSize=9 if cell < 12 else 10, ticks=False)
    xenc = alt.X("setting_b:N", sort=order, title=None, axis=alt.Axis(labelAngle=-90, **ax))
    yenc = alt.Y("setting_a:N", sort=order, title=None, axis=alt.Axis(**ax))
    tips = [alt.Tooltip("setting_a:N", title="setting A"), alt.Tooltip("setting_b:N", title="setting B"),
            alt.Tooltip("value:Q", title=title, format=".3f" if stat != "sign_flips" else "d")]
    if "differs_in" in m.columns:
        tips.append(alt.Tooltip("differs_in:N", title="differ in"))
    if "lo" in m.columns and m["lo"].notna().any():
        tips += [alt.Tooltip("lo:Q", title="95% interval from", format=".3f"), alt.Tooltip("hi:Q", title="95% interval to", format=".3f")]
    if "floor_a" in m.columns and m["floor_a"].notna().any():
        tips += [alt.Tooltip("floor_a:Q", title="A with itself (noise floor)", format=".3f"),
                 alt.Tooltip("floor_b:Q", title="B with itself (noise floor)", format=".3f")]
        if "cross" in m.columns:
            tips += [alt.Tooltip("cross:Q", title="A with B on the same halves", format=".3f"),
                     alt.Tooltip("floor_q:Q", title="q: they agree less than with themselves", format=".2g")]
    rect = alt.Chart(_data(m)).mark_rect().encode(x=xenc, y=yenc, color=alt.Color("value:Q", scale=scale, title=title), tooltip=tips)
    layers = [rect] + _headers(lay, "setting_b", True, cell) + _headers(lay, "setting_a", False, cell)
    return (alt.layer(*layers).properties(width=cell * len(order), height=cell * len(order), autosize=alt.AutoSizeParams(type="pad", contains="padding"))
            .configure_view(stroke=None))


def consensus_matrix(m: pd.DataFrame, lay: pd.DataFrame, level: float = 0.95) -> alt.LayerChart:
    """The top components (rows, core first) × every setting (blocked by
    ``lay``): colour = z of the 2-SD rule, detected cells outlined (solid
    black above the band, dashed magenta below), significant ones dotted,
    cells zero by construction grey. A click selects a component (``pick``)."""
    order = list(lay["setting"])
    names = dict(zip(lay["setting"], lay["short"]))
    rows = list(dict.fromkeys(m.sort_values("rank")["row"]))
    cell = _cell_size(len(order))
    d = m.assign(zc=m["z"].clip(-6, 6), sign=m["detected"].map({1: "above the band", -1: "below the band", 0: ""}))
    xenc = alt.X("setting:N", sort=order, title=None,
                 axis=alt.Axis(labelExpr=_label_expr(names), labelAngle=-90, labelOverlap=False, labelFontSize=9 if cell < 12 else 10, ticks=False))
    yenc = alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelFontSize=10, labelLimit=160, labelOverlap=False))
    tips = [alt.Tooltip("component:N"), alt.Tooltip("setting:N"), alt.Tooltip("effect:Q", format=".4~g"),
            alt.Tooltip("lo:Q", title="95% interval from", format=".4~g"), alt.Tooltip("hi:Q", title="95% interval to", format=".4~g"),
            alt.Tooltip("z:Q", title="z (SDs from the mean)", format=".2f"), alt.Tooltip("sign:N", title="2-SD rule"),
            alt.Tooltip("stability:Q", title="detected in (share of resamples)", format=".0%")]
    pick = alt.selection_point(name="pick", fields=["component"], on="click", clear="dblclick")
    base = alt.Chart(_data(d[["component", "setting", "row", "effect", "lo", "hi", "z", "zc", "sign", "stability", "measured"]])).encode(x=xenc, y=yenc)
    rect = base.mark_rect().encode(
        color=alt.condition("isValid(datum.zc) && datum.measured", alt.Color("zc:Q", scale=alt.Scale(scheme="redblue", domain=[-6, 6], domainMid=0),
                                                                           title="z (2-SD rule)"), alt.value("#d9d9d9")),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.45)), tooltip=tips).add_params(pick)
    det = d[d["detected"] != 0]
    outline = alt.Chart(_data(det[["component", "setting", "row", "effect", "lo", "hi", "z", "sign", "stability"]])).mark_rect(fill=None, strokeWidth=1.4).encode(
        x=xenc, y=yenc, stroke=alt.Stroke("sign:N", scale=alt.Scale(domain=["above the band", "below the band"], range=[DETECT_STROKE[1], DETECT_STROKE[-1]]),
                                          legend=alt.Legend(title="2-SD rule")),
        strokeDash=alt.StrokeDash("sign:N", scale=alt.Scale(domain=["above the band", "below the band"], range=[[1, 0], [3, 2]]), legend=None),
        tooltip=tips)
    dots = alt.Chart(_data(d.loc[d["significant"], ["component", "setting", "row", "effect", "lo", "hi", "z", "sign", "stability"]])).mark_circle(size=9 if cell < 12 else 14, color="#111", opacity=0.9).encode(x=xenc, y=yenc, tooltip=tips)
    layers = [rect, outline, dots]
    # The groups' first rows marked on the right ("core ≥ 90 %", "fringe"), and a thick line between them.
    firsts = m.sort_values("rank").drop_duplicates("group")[["row", "group"]]
    firsts = firsts.assign(text=firsts["group"].map({"core": "▼ core (≥ 90 % of settings)", "fringe": "▼ fringe"}))
    layers.append(alt.Chart(firsts).mark_text(align="left", baseline="bottom", dx=4, fontSize=10, fontWeight="bold", color="#333")
                  .encode(y=alt.Y("row:N", sort=rows, bandPosition=0), x=alt.value(cell * len(order)), text="text:N"))
    if (firsts["group"] == "core").any() and len(firsts) == 2:
        layers.append(alt.Chart(firsts[firsts["group"] == "fringe"]).mark_rule(color="#111", strokeWidth=2.5)
                      .encode(y=alt.Y("row:N", sort=rows, bandPosition=0)))
    layers += _headers(lay, "setting", True, cell)
    wide = len(order) > 40  # legends below, where there is room
    legend = dict(orient="bottom", direction="horizontal", offset=30) if wide else dict(offset=150)
    return (alt.layer(*layers).properties(width=cell * len(order), height=alt.Step(15), autosize=alt.AutoSizeParams(type="pad", contains="padding"))
            .configure_view(stroke=None).configure_legend(gradientLength=120, labelLimit=160, **legend))


def component_effects(d: pd.DataFrame, component: str) -> alt.FacetChart:
    """One component's effect under every setting with its interval, a panel
    per metric (their units differ); ``d`` from
    ``patching.studies.disagreement.consensus.detail`` with ``panel`` and ``x``."""
    xs = list(dict.fromkeys(d["x"]))
    data = d.assign(state=d["detected"].map({1: "detected (above)", -1: "detected (below)", 0: "not detected"}))
    tips = [alt.Tooltip("setting:N"), alt.Tooltip("effect:Q", format=".4~g"), alt.Tooltip("lo:Q", title="95% interval from", format=".4~g"),
            alt.Tooltip("hi:Q", title="95% interval to", format=".4~g"), alt.Tooltip("state:N", title="2-SD rule"),
            alt.Tooltip("stability:Q", title="detected in (share of resamples)", format=".0%")]
    x = alt.X("x:N", sort=xs, title=None, axis=alt.Axis(labelAngle=-60, labelLimit=140, labelOverlap=False))
    colors = alt.Scale(domain=["detected (above)", "detected (below)", "not detected"], range=["#1f4e9c", "#b02a37", "#9aa5b1"])
    zero = alt.Chart().mark_rule(color="#adb5bd", strokeDash=[3, 3]).encode(y=alt.datum(0))
    err = alt.Chart().mark_rule(strokeWidth=2, color="#7b8794").encode(x=x, y=alt.Y("lo:Q", title="effect (95% interval over prompts)"), y2="hi:Q", tooltip=tips)
    pts = alt.Chart().mark_point(filled=True, size=55).encode(x=x, y="effect:Q", color=alt.Color("state:N", scale=colors, title=component), tooltip=tips)
    panels = list(dict.fromkeys(d["panel"]))
    columns = len(panels) if len(xs) <= 12 else 1  # wide panels (the method grid) one under another
    return (alt.layer(zero, err, pts, data=_data(data.drop(columns=[c for c in data.columns if c in ("block_start",)])))
            .properties(width=max(160, 16 * len(xs)), height=200)
            .facet(facet=alt.Facet("panel:N", title=None, sort=panels), columns=columns)
            .resolve_scale(y="independent", x="independent"))
