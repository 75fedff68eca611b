"""Altair charts of circuits (no streamlit import), beside ``ui/charts.py``
(which holds every other chart; these two have a module of their own to keep
both under the project's module size):

* :func:`faithfulness_curve` -- the top-n circuits' faithfulness against
  their size (log scale) with its 95 % interval, the random circuits' band
  (5th-95th percentile) and mean, the knee and the chosen size, and any
  evaluated circuit or hypothesis as a point.
* :func:`circuit_graph` -- a circuit as a layered graph: layers top to
  bottom, heads and MLPs as nodes, edges weighted by |score| and coloured by
  the receiver port (q, k, v, MLP, logits); a click selects an edge
  (selection ``edge``, field ``label``).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

PORTS = ["q", "k", "v", "mlp", "logits"]
PORT_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#444444"]


def faithfulness_curve(top: pd.DataFrame, band: pd.DataFrame, knee: int, chosen: int | None = None,
                       points: pd.DataFrame | None = None, title: str = "", width: int = 760) -> alt.LayerChart:
    """``top``: n_edges, faithfulness, lo, hi, n_kept; ``band``: n_edges, mean,
    lo, hi; ``points``: n_edges, faithfulness, name (circuits evaluated on
    their own)."""
    x = alt.X("n_edges:Q", scale=alt.Scale(type="log"), title="edges in the circuit (log scale)")
    y_title = "faithfulness"
    layers = []
    if len(band):
        b = band.copy()
        b["series"] = "random circuits (5-95 %)"
        layers.append(alt.Chart(b).mark_area(opacity=0.25, color="#9e9e9e").encode(
            x=x, y=alt.Y("lo:Q", title=y_title), y2="hi:Q",
            tooltip=[alt.Tooltip("n_edges:Q", title="edges"), alt.Tooltip("mean:Q", title="random: mean", format=".3f"),
                     alt.Tooltip("lo:Q", title="5th percentile", format=".3f"), alt.Tooltip("hi:Q", title="95th percentile", format=".3f")]))
        layers.append(alt.Chart(b).mark_line(strokeDash=[4, 3], color="#757575").encode(x=x, y="mean:Q"))
    t = top.copy()
    if t["lo"].notna().any():
        layers.append(alt.Chart(t).mark_area(opacity=0.25, color="#1f4e9c").encode(x=x, y=alt.Y("lo:Q", title=y_title), y2="hi:Q"))
    tips = [alt.Tooltip("n_edges:Q", title="edges"), alt.Tooltip("faithfulness:Q", format=".4f"),
            alt.Tooltip("lo:Q", title="95% interval from", format=".4f"), alt.Tooltip("hi:Q", title="95% interval to", format=".4f"),
            alt.Tooltip("n_kept:Q", title="edges kept after pruning"), alt.Tooltip("n_nodes:Q", title="nodes")]
    layers.append(alt.Chart(t).mark_line(point=True, color="#1f4e9c").encode(x=x, y=alt.Y("faithfulness:Q", title=y_title), tooltip=tips))
    marks = pd.DataFrame([{"n_edges": knee, "what": "knee"}] + ([{"n_edges": chosen, "what": "shown below"}] if chosen and chosen != knee else []))
    layers.append(alt.Chart(marks).mark_rule(strokeDash=[2, 2]).encode(
        x="n_edges:Q", color=alt.Color("what:N", scale=alt.Scale(domain=["knee", "shown below"], range=["#e8590c", "#6a3d9a"]),
                                       legend=alt.Legend(title=None, orient="bottom")),
        tooltip=[alt.Tooltip("what:N"), alt.Tooltip("n_edges:Q", title="edges")]))
    if points is not None and len(points):
        layers.append(alt.Chart(points).mark_point(shape="diamond", size=120, filled=True, color="#d6007e").encode(
            x=x, y="faithfulness:Q", tooltip=[alt.Tooltip("name:N"), alt.Tooltip("n_edges:Q", title="edges"),
                                              alt.Tooltip("faithfulness:Q", format=".4f")]))
    layers.append(alt.Chart(pd.DataFrame({"y": [0.0, 1.0]})).mark_rule(color="#bdbdbd").encode(y="y:Q"))
    return alt.layer(*layers).properties(title=title, width=width, height=320)


def circuit_graph(nodes: pd.DataFrame, edges: pd.DataFrame, n_heads: int, title: str = "", select: bool = True,
                  row_height: int = 26) -> alt.LayerChart:
    """The layered graph of ``patching.analysis.circuit_view.graph_tables``."""
    n_rows = int(nodes["y"].max()) + 1 if len(nodes) else 1
    xs = alt.Scale(domain=[-1, n_heads + 2], nice=False)
    ys = alt.Scale(domain=[-0.5, n_rows - 0.5], reverse=True, nice=False)
    X = alt.X("x:Q", scale=xs, axis=None)
    Y = alt.Y("y:Q", scale=ys, axis=None)
    e = edges.copy()
    e["width"] = 0.6 + 4.4 * e["weight"].fillna(1.0)
    color = alt.Color("port:N", scale=alt.Scale(domain=PORTS, range=PORT_COLORS), legend=alt.Legend(title="receiver input", orient="bottom"))
    tips = [alt.Tooltip("label:N", title="edge"), alt.Tooltip("port:N", title="into"), alt.Tooltip("score:Q", format=".4~g"),
            alt.Tooltip("effect:Q", title="exact effect", format=".4~g")]
    base = alt.Chart(e).encode(x=X, y=Y, x2="x2:Q", y2="y2:Q")
    lines = base.mark_rule(opacity=0.7).encode(color=color, strokeWidth=alt.StrokeWidth("width:Q", legend=None, scale=None), tooltip=tips)
    layers = [lines]
    if select:
        sel = alt.selection_point(name="edge", fields=["label"], on="click", clear="dblclick")
        # A wide, nearly invisible copy of every edge: easy to click.
        layers.append(base.mark_rule(strokeWidth=9, opacity=0.02).encode(tooltip=tips).add_params(sel))
    shape = alt.Shape("kind:N", scale=alt.Scale(domain=["embed", "head", "mlp", "logits"], range=["square", "circle", "diamond", "square"]),
                      legend=None)
    nd = alt.Chart(nodes).encode(x=X, y=Y)
    layers.append(nd.mark_point(filled=True, size=140, color="#31333f", opacity=0.9).encode(
        shape=shape, tooltip=[alt.Tooltip("node:N"), alt.Tooltip("row:N", title="row")]))
    layers.append(nd.mark_text(dy=-11, fontSize=10, color="#31333f").encode(text="node:N"))
    rows = nodes.drop_duplicates("y")[["y", "row"]]
    layers.append(alt.Chart(rows).mark_text(align="right", fontSize=10, color="#6b7280").encode(
        x=alt.value(0), y=Y, text="row:N"))
    return alt.layer(*layers).properties(title=title, width=max(360, 48 * (n_heads + 3)), height=max(160, row_height * n_rows))
