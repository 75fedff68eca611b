"""Altair charts for patching results (no streamlit import: usable from
scripts and tests).

* :func:`heatmap` — any two of layer/head/position, diverging red–white–blue
  scale centred on 0 (blue = the component carries the behaviour), tooltips
  with exact values, cells detected by the 2-SD rule outlined (positive: solid
  black; negative: dashed magenta); cells that are zero by construction
  (``measured`` False) grey, with their count under the title.
* :func:`window_lines` — a sliding-window sweep at one position next to the
  summation baseline (sum of single-layer effects over the same window).
* :func:`settings_scatter`, :func:`rank_bump` — the Disagreement page:
  setting A against setting B, the top components' ranks across settings
  (its grid charts are in :mod:`ui.grid_charts` and :mod:`ui.answer_chart`).
* :func:`spec_of` — a chart's Vega-Lite spec, unvalidated (pages cache it per stored result).
* :func:`to_bytes` — PNG/SVG through vl-convert (``chart.save``).
"""

from __future__ import annotations

import io
import math

import altair as alt
import pandas as pd

DETECT_DOMAIN = ["positive", "negative"]
DETECT_STROKE = ["#111111", "#d6007e"]
DETECT_DASH = [[1, 0], [4, 2]]
#: Cells that are zero by construction (no-op patches): not measurements.
NOOP_GREY = "#dee2e6"

METRIC_TITLES = {
    "logit_diff": "logit diff (normalised)",
    "prob": "Δ probability",
    "logprob": "Δ log-probability",
    "kl": "KL effect (towards the source run)",
    "prob_diff": "Δ P(answer) − P(counter)",
}

#: Who detects a component in a scatter of two settings (2-SD rule).
DETECTED_COLORS = {"both": "#6a3d9a", "A only": "#1f78b4", "B only": "#e6550d", "neither": "#c7c7c7"}


def _limit(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").abs()
    m = float(v[v.notna() & v.map(math.isfinite)].max()) if v.notna().any() else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def heatmap(t: pd.DataFrame, x: str, y: str = "layer", *, metric: str, title: str = "", x_title: str | None = None,
            y_title: str | None = None, x_sort: list | str | None = "ascending", cell: int = 18,
            width: int | str | None = None, select: bool = False) -> alt.LayerChart:
    """``t`` has columns x, y, value, label, z, detected (see
    ``patching.analysis.detection.with_detection``) and optionally pos_label/head/pos.
    ``select``: a click on a cell selects it (selection ``cell``, fields
    ``label``), for Streamlit's ``on_select``."""
    data = t.copy()
    data["value"] = pd.to_numeric(data["value"], errors="coerce")
    data["detected"] = data["detected"].fillna("")
    m = _limit(data["value"])
    n_y = data[y].nunique()
    n_x = data[x].nunique()
    x_is_token = x == "pos_label"
    xenc = alt.X(f"{x}:O", sort=x_sort, title=x_title or x,
                 axis=alt.Axis(labelAngle=-50 if x_is_token else 0, labelLimit=140, labelOverlap=False))
    yenc = alt.Y(f"{y}:O", sort="ascending", title=y_title or y, axis=alt.Axis(labelOverlap=False))
    tooltip = [alt.Tooltip("label:N", title="component"), alt.Tooltip("layer:O")]
    if "head" in data.columns and data["head"].notna().any():
        tooltip.append(alt.Tooltip("head:O"))
    if "pos_label" in data.columns and (data["pos_label"].astype(str) != "").any():
        tooltip.append(alt.Tooltip("pos_label:N", title="position"))
    tooltip += [
        alt.Tooltip("value:Q", title=METRIC_TITLES.get(metric, metric), format=".6~g"),
        alt.Tooltip("z:Q", title="z (SDs from mean)", format=".2f"),
        alt.Tooltip("detected:N", title="2-SD rule"),
    ]
    if "value_lo" in data.columns and data["value_lo"].notna().any():
        tooltip[-2:-2] = [alt.Tooltip("value_lo:Q", title="95% interval from", format=".4~g"),
                          alt.Tooltip("value_hi:Q", title="95% interval to", format=".4~g")]
        tooltip.append(alt.Tooltip("detect_stability:Q", title="detected in (share of resamples)", format=".0%"))
    live = data["measured"].astype(bool) if "measured" in data.columns else pd.Series(True, index=data.index)
    noop = data[~live]
    data = data[live]
    base = alt.Chart(data).encode(x=xenc, y=yenc)
    cells = base.mark_rect().encode(
        color=alt.Color(
            "value:Q",
            scale=alt.Scale(scheme="redblue", domain=[-m, m], domainMid=0, clamp=True),
            legend=alt.Legend(title=METRIC_TITLES.get(metric, metric), orient="right", gradientLength=min(300, max(120, n_y * cell))),
        ),
        tooltip=tooltip,
    )
    if select:
        cells = cells.add_params(alt.selection_point(name="cell", fields=["label"], on="click", clear="dblclick"))
    det = data[data["detected"].isin(DETECT_DOMAIN)]
    layers = [cells]
    if len(noop):
        # Zero by construction (a no-op patch): not a measurement, so grey, outside the colour scale and the 2-SD rule.
        grey = noop.assign(note="zero by construction: patched only where both prompts are identical")
        tips = [t for t in tooltip if t.to_dict().get("field") in ("label", "layer", "head", "pos_label")] + [alt.Tooltip("note:N", title="not measured")]
        layers.append(alt.Chart(grey).mark_rect(color=NOOP_GREY).encode(x=xenc, y=yenc, tooltip=tips))
        if not title:
            title = " "
        title = alt.TitleParams(title, subtitle=f"{len(noop)} grey cells: zero by construction, not measured (left out of every statistic)")
    if len(det):
        outline = (
            alt.Chart(det)
            .mark_rect(fill=None, strokeWidth=2.2)
            .encode(
                x=xenc,
                y=yenc,
                stroke=alt.Stroke("detected:N", scale=alt.Scale(domain=DETECT_DOMAIN, range=DETECT_STROKE),
                                  legend=alt.Legend(title="2-SD rule", orient="right")),
                strokeDash=alt.StrokeDash("detected:N", scale=alt.Scale(domain=DETECT_DOMAIN, range=DETECT_DASH), legend=None),
                tooltip=tooltip,
            )
        )
        layers.append(outline)
    w = width if width is not None else max(220, min(900, n_x * (cell + 14 if x_is_token else cell + 18)))
    return (alt.layer(*layers)
            .properties(title=title, width=w, height=max(160, n_y * cell), autosize=alt.AutoSizeParams(type="pad", contains="padding"))
            .configure_view(stroke=None))


def top_bars(top: pd.DataFrame, metric: str, width: int = 560) -> alt.LayerChart:
    """The strongest components with their 95 % bootstrap intervals as error
    bars (``top`` from ``patching.analysis.detection.top_components`` with ``value_lo``/``value_hi``)."""
    d = top.copy()
    order = list(d["label"])
    y = alt.Y("label:N", sort=order, title=None)
    bars = alt.Chart(d).mark_rule(strokeWidth=2, color="#7b8794").encode(
        y=y, x=alt.X("value_lo:Q", title=f"{METRIC_TITLES.get(metric, metric)} (95% interval over prompts)"), x2="value_hi:Q")
    dots = alt.Chart(d).mark_point(filled=True, size=60).encode(
        y=y, x="value:Q",
        color=alt.condition("datum.value >= 0", alt.value("#1f4e9c"), alt.value("#b02a37")),
        tooltip=[alt.Tooltip("label:N", title="component"), alt.Tooltip("value:Q", format=".5f"),
                 alt.Tooltip("value_lo:Q", title="from", format=".5f"), alt.Tooltip("value_hi:Q", title="to", format=".5f"),
                 alt.Tooltip("detect_stability:Q", title="detected in", format=".0%")])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#adb5bd", strokeDash=[3, 3]).encode(x="x:Q")
    return alt.layer(zero, bars, dots).properties(width=width, height=max(120, 18 * len(d)))


def window_lines(t: pd.DataFrame, metric: str, pos: int, pos_label: str, title: str = "", width: int = 640) -> alt.Chart:
    """Joint window effect vs the summation baseline (and the single-layer
    effect) across layers, at position ``pos``."""
    d = t[t["pos"] == pos].sort_values("layer")
    rows = []
    for _, r in d.iterrows():
        rows.append({"layer": int(r["layer"]), "series": "window (joint patch)", "value": float(r[metric])})
        if f"sum_{metric}" in d.columns:
            rows.append({"layer": int(r["layer"]), "series": "sum of single layers", "value": float(r[f"sum_{metric}"])})
        if f"single_{metric}" in d.columns:
            rows.append({"layer": int(r["layer"]), "series": "single layer", "value": float(r[f"single_{metric}"])})
    data = pd.DataFrame(rows)
    order = ["window (joint patch)", "sum of single layers", "single layer"]
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (window centre)", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=METRIC_TITLES.get(metric, metric)),
            color=alt.Color("series:N", sort=order, scale=alt.Scale(domain=order, range=["#1f4e9c", "#e8590c", "#adb5bd"]),
                            legend=alt.Legend(title=f"at position {pos_label}", orient="bottom")),
            strokeDash=alt.StrokeDash("series:N", sort=order, scale=alt.Scale(domain=order, range=[[1, 0], [6, 3], [2, 2]]), legend=None),
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("layer:Q"), alt.Tooltip("value:Q", format=".6~g")],
        )
        .properties(title=title, width=width, height=300, autosize=alt.AutoSizeParams(type="pad", contains="padding"))
    )


def spec_of(chart: alt.TopLevelMixin) -> dict:
    """A chart's Vega-Lite spec with its data inline, without Altair's
    JSON-schema validation (about 40 % of building a heatmap; these charts'
    shapes are fixed here and drawn by the tests) and without Altair's default
    theme's view size (Streamlit drops it too)."""
    d = chart.to_dict(validate=False)
    view = d.get("config", {}).get("view", {})
    for k in ("continuousWidth", "continuousHeight"):
        view.pop(k, None)
    return d


def to_bytes(chart: "alt.TopLevelMixin | dict", fmt: str) -> bytes:
    """PNG (2× scale) or SVG of a chart (or its spec, :func:`spec_of`) via vl-convert."""
    if isinstance(chart, dict):
        import vl_convert as vlc

        return vlc.vegalite_to_png(chart, scale=2) if fmt == "png" else vlc.vegalite_to_svg(chart).encode()
    buf = io.BytesIO() if fmt == "png" else io.StringIO()
    if fmt == "png":
        chart.save(buf, format="png", scale_factor=2)
        return buf.getvalue()
    chart.save(buf, format="svg")
    return buf.getvalue().encode()


def attention_heatmap(matrix: list[list[float]], q_tokens: list[str], k_tokens: list[str], title: str, cell: int = 16) -> alt.Chart:
    """One head's attention pattern: query (row) x key (column), 0..1, with
    the tokens on the axes (position-prefixed so repeated tokens stay apart)."""
    ql = [f"{i}:{t}" for i, t in enumerate(q_tokens)]
    kl = [f"{i}:{t}" for i, t in enumerate(k_tokens)]
    rows = [{"query": ql[q], "key": kl[k], "attention": float(v)} for q, r in enumerate(matrix) for k, v in enumerate(r) if k <= q]
    df = pd.DataFrame(rows)
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("key:N", sort=kl, title="key (attended) position"),
        y=alt.Y("query:N", sort=ql, title="query position"),
        color=alt.Color("attention:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"), title="attention"),
        tooltip=["query", "key", alt.Tooltip("attention:Q", format=".3f")],
    ).properties(width=cell * len(kl), height=cell * len(ql))


# ---------------------------------------------------------------- disagreement


def _settings_axis(field: str, order: list[str], x: bool):
    axis = alt.Axis(labelAngle=-50, labelLimit=220, labelOverlap=False) if x else alt.Axis(labelLimit=220, labelOverlap=False)
    return (alt.X if x else alt.Y)(field, sort=order, title=None, axis=axis)


def settings_scatter(sc: pd.DataFrame, a: str, b: str, units: str = "raw") -> alt.LayerChart:
    """Each component's effect under setting A (x) against B (y), raw or in
    SDs of each sweep (``units="z"``), coloured by who detects it, the
    detected ones labelled, with the identity line (``sc`` from
    ``GridReport.scatter``)."""
    xcol, ycol = ("a", "b") if units == "raw" else ("z_a", "z_b")
    lo = float(min(sc[xcol].min(), sc[ycol].min()))
    hi = float(max(sc[xcol].max(), sc[ycol].max()))
    pad = 0.05 * (hi - lo or 1.0)
    dom = [lo - pad, hi + pad]
    z = " (z)" if units == "z" else ""
    colors = alt.Scale(domain=list(DETECTED_COLORS), range=list(DETECTED_COLORS.values()))
    pts = alt.Chart(sc).mark_circle(size=55, opacity=0.85).encode(
        x=alt.X(f"{xcol}:Q", title=f"A: {a}{z}", scale=alt.Scale(domain=[dom[0], dom[1] + 2 * pad], nice=False)),
        y=alt.Y(f"{ycol}:Q", title=f"B: {b}{z}", scale=alt.Scale(domain=dom, nice=False)),
        color=alt.Color("detected:N", scale=colors, title="detected (2 SD)"),
        tooltip=["component", alt.Tooltip("a:Q", format=".4g", title="A"), alt.Tooltip("b:Q", format=".4g", title="B"),
                 alt.Tooltip("z_a:Q", format=".2f"), alt.Tooltip("z_b:Q", format=".2f"), "detected", "sign_flip"],
    )
    labels = alt.Chart(sc[sc["detected"] != "neither"]).mark_text(align="left", dx=6, dy=-4, fontSize=11).encode(
        x=f"{xcol}:Q", y=f"{ycol}:Q", text="component")
    line = alt.Chart(pd.DataFrame({"x": dom, "y": dom})).mark_line(strokeDash=[5, 4], color="#888").encode(x="x:Q", y="y:Q")
    chart = (line + pts + labels).properties(width=620, height=460).interactive()
    gone = int(sc.attrs.get("n_unmeasured", 0) or 0)
    if gone:  # zero by construction under A or B: not measurements, so not drawn
        chart = chart.properties(title=alt.TitleParams(" ", subtitle=f"{gone} components zero by construction under A or B are not drawn"))
    return chart


def rank_bump(rk: pd.DataFrame, order: list[str], top: int) -> alt.LayerChart:
    """The ``top`` components of setting A, their rank by |effect| under
    every setting (``rk`` from ``GridReport.ranks``: bottom = 2·top + 1 or
    lower)."""
    cap = 2 * int(top) + 1
    bump = alt.Chart(rk).encode(
        x=_settings_axis("setting:N", order, True),
        y=alt.Y("shown_rank:Q", scale=alt.Scale(reverse=True, domain=[1, cap]), title=f"rank by |effect| (bottom = {cap} or lower)"),
        color=alt.Color("component:N", sort=list(dict.fromkeys(rk["component"])), title=f"top {top} under A"),
        tooltip=["component", "setting", "rank", alt.Tooltip("effect:Q", format=".4g"), alt.Tooltip("z:Q", format=".2f")],
    )
    return (bump.mark_line(opacity=0.6) + bump.mark_point(filled=True, size=50)).properties(
        width=alt.Step(max(22, min(56, 900 // max(1, len(order))))), height=380)


# ---------------------------------------------------------------- across models

#: The attention and MLP outputs in the cross-model charts.
LAYER_KIND_TITLES = {"attn_out": "attention output", "mlp_out": "MLP output"}
#: One clearly different colour per model (the theme's blues would blur them).
MODEL_COLORS = ["#1f4e9c", "#d95f02", "#1b9e77", "#7570b3"]


def depth_profile(d: pd.DataFrame, metric: str, width: int = 300) -> alt.FacetChart | alt.LayerChart:
    """Effects by relative depth, one line per model, attention and MLP side
    by side (``d`` from ``patching.studies.cross_model.depth_profile``): each
    layer's strongest cell, its 95 % interval as a band."""
    d = d.assign(kind=d["component"].map(LAYER_KIND_TITLES).fillna(d["component"]))
    x = alt.X("rel_depth:Q", title="relative depth (layer / last layer)", scale=alt.Scale(domain=[0, 1]))
    color = alt.Color("model:N", title="model", scale=alt.Scale(range=MODEL_COLORS))
    band = alt.Chart().mark_area(opacity=0.18).encode(x=x, y="lo:Q", y2="hi:Q", color=color)
    line = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("effect:Q", title=f"{METRIC_TITLES.get(metric, metric)}, strongest position"), color=color,
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("layer:Q"), alt.Tooltip("n_layers:Q", title="layers"),
                 alt.Tooltip("pos_label:N", title="position"), alt.Tooltip("effect:Q", format=".4f"),
                 alt.Tooltip("lo:Q", title="from", format=".4f"), alt.Tooltip("hi:Q", title="to", format=".4f")])
    zero = alt.Chart().mark_rule(color="#adb5bd", strokeDash=[3, 3]).encode(y=alt.datum(0))
    return alt.layer(zero, band, line, data=d).properties(width=width, height=220).facet(
        column=alt.Column("kind:N", title=None, sort=list(LAYER_KIND_TITLES.values())))


def model_intervals(d: pd.DataFrame, value: str, title: str, label: str = "model", fmt: str = ".3f",
                    color: str | None = None, width: int = 420) -> alt.LayerChart:
    """One dot per row (``label``) with its 95 % interval (``lo``/``hi``) as a
    rule: attention share, heads detected, a factor's median Spearman."""
    y = alt.Y(f"{label}:N", title=None, sort=list(dict.fromkeys(d[label])), axis=alt.Axis(labelLimit=320))
    enc = {"color": alt.Color(f"{color}:N", scale=alt.Scale(range=MODEL_COLORS))} if color else {}
    rules = alt.Chart(d).mark_rule(strokeWidth=2, color="#7b8794").encode(y=y, x=alt.X("lo:Q", title=title), x2="hi:Q")
    dots = alt.Chart(d).mark_point(filled=True, size=70).encode(
        y=y, x=f"{value}:Q", **enc,
        tooltip=[alt.Tooltip(f"{label}:N"), alt.Tooltip(f"{value}:Q", format=fmt), alt.Tooltip("lo:Q", title="from", format=fmt),
                 alt.Tooltip("hi:Q", title="to", format=fmt)])
    return alt.layer(rules, dots).properties(width=width, height=max(90, 34 * len(d)),
                                             autosize=alt.AutoSizeParams(type="pad", contains="padding"))


def sign_flip_map(flags: pd.DataFrame, method: str, cell: int = 14) -> alt.Chart:
    """Layer × position: where an estimate has the opposite sign to exact
    patching (``flags`` from ``patching.analysis.estimate_error.sign_flags``;
    several cells per layer and position, e.g. heads, count as a flip when any does)."""
    d = flags.dropna(subset=["layer", "pos"]).copy()
    d["label"] = [f"{int(p)}:{str(lab).strip()}" for p, lab in zip(d["pos"], d["pos_label"])]
    g = d.groupby(["layer", "pos", "label"], as_index=False).agg(flip=("flip", "max"), approx=("approx", "first"), exact=("exact", "first"))
    g["state"] = g["flip"].map({True: "opposite sign", False: "same sign or ~0"})
    order = [lab for _, lab in sorted(set(zip(g["pos"], g["label"])))]
    return alt.Chart(g).mark_rect().encode(
        x=alt.X("label:N", sort=order, title="position"), y=alt.Y("layer:O", sort="descending"),
        color=alt.Color("state:N", scale=alt.Scale(domain=["opposite sign", "same sign or ~0"], range=["#d6007e", "#eef1f4"]),
                        title=f"{method} vs exact"),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("label:N", title="position"), alt.Tooltip("state:N"),
                 alt.Tooltip("approx:Q", title=method, format=".4f"), alt.Tooltip("exact:Q", format=".4f")],
    ).properties(width=max(160, cell * len(order)), height=max(120, cell * int(g["layer"].max() + 1)),
                 title="Where the estimate points the wrong way")
