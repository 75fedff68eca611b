"""Click to drill down: the component a heatmap cell stands for.

A click on a cell selects it (``charts.heatmap(select=True)``); the choice
travels in the URL as ``cell`` (``L9H6``, ``L3P5``, ``L9H6P11``), so a link
opens the drill-down too. It shows the component's value under every metric,
its effect by position, and for a head its attention pattern on the first
pair's clean and corrupted prompts (one forward pass, on a button: a link
never starts a computation by itself).
"""

from __future__ import annotations

import re

import altair as alt
import pandas as pd
import streamlit as st

from patching.core.errors import PatchboardError, shown
from patching.core.spec import METRICS, Spec
from ui import html as ui_html
from ui import access, charts, runtime, url
from ui.plain import md_plain

_CELL = re.compile(r"^L(\d{1,4})(?:H(\d{1,4}))?(?:P(\d{1,5}))?$")


def parse_cell(text: str) -> tuple[int, int | None, int | None]:
    m = _CELL.match(str(text or "").strip())
    if not m:
        raise PatchboardError("cell", f"{shown(text, 40)} is not a component label such as L9H6, L3P5 or L9H6P11")
    layer, head, pos = (int(g) if g is not None else None for g in m.groups())
    return layer, head, pos


def current_cell(event) -> str:
    """The selected cell: a click (the chart's selection event) or the link's
    ``cell`` parameter; '' when none."""
    key = url.url_widget("cell", "")
    sel = []
    try:
        sel = (event or {}).get("selection", {}).get("cell") or []
    except AttributeError:
        sel = []
    if sel and isinstance(sel[0], dict) and sel[0].get("label"):
        st.session_state[key] = str(sel[0]["label"])
    value = str(st.session_state.get(key) or "")
    if value and not _CELL.match(value):
        st.session_state[key] = ""
        return ""
    return value


def drill_down(spec: Spec, res, label: str) -> None:
    """The drill-down panel for ``label`` (see the module doc)."""
    try:
        layer, head, pos = parse_cell(label)
    except PatchboardError as e:
        ui_html.show_error(e)
        return
    t = res.table
    rows = t[(t["layer"] == layer) & (t["head"].isna() if head is None else t["head"] == head)]
    if pos is not None:
        rows = rows[rows["pos"] == pos]
    if rows.empty:
        st.info(f"{label} is not a component of this result.")
        return
    c1, c2 = st.columns([6, 1])
    c1.subheader(f"Component {label}")
    if c2.button("Close", key="pb_cell_close", icon=":material/close:"):
        st.session_state[url.url_widget("cell", "")] = ""
        st.rerun()
    vals = rows[[m for m in METRICS if m in rows.columns]].mean()
    ui_html.show_table(pd.DataFrame([{"metric": m, "effect": float(v)} for m, v in vals.items()]), {"effect": ".5f"}, signed=("effect",),
                       caption=f"{label}'s effect under every metric ({spec.direction}, {spec.corruption}); all come from the same patched runs.")
    _by_position(spec, res, layer, head)
    if head is not None:
        _attention(spec, layer, head)
    st.caption("Per-prompt values of a component are not stored yet; the numbers above are means over the "
               f"{md_plain(res.meta.get('n_pairs', spec.n_pairs))} pair(s).")


def _by_position(spec: Spec, res, layer: int, head: int | None) -> None:
    metric = spec.metric
    src = None
    if head is None or spec.component == "head_by_pos":
        src = res.table
    else:
        other = runtime.lookup_result(spec.with_(component="head_by_pos"))
        if other is not None:
            src = other.table
        else:
            st.caption(f"The effect of head L{layer}H{head} position by position needs the head × position sweep, not stored yet.")
            if access.read_only():
                return
            if st.button("Compute every head by position", key="pb_cell_bypos"):
                if runtime.run_spec(spec.with_(component="head_by_pos")) is not None:
                    st.rerun()
            return
    d = src[(src["layer"] == layer) & (src["head"].isna() if head is None else src["head"] == head) & src["pos"].notna()]
    if d.empty:
        return
    order = list(dict.fromkeys(d.sort_values("pos")["pos_label"]))
    ch = (alt.Chart(d.assign(value=d[metric])).mark_bar()
          .encode(x=alt.X("pos_label:N", sort=order, title="position (token)", axis=alt.Axis(labelAngle=-50)),
                  y=alt.Y("value:Q", title=metric),
                  color=alt.condition("datum.value >= 0", alt.value("#3b6fb6"), alt.value("#c0392b")),
                  tooltip=["pos_label:N", alt.Tooltip("value:Q", format=".5f")])
          .properties(title=f"L{layer}" + (f"H{head}" if head is not None else "") + f" by position ({metric})", width=560, height=180))
    st.altair_chart(ch, width="content")


def _attention(spec: Spec, layer: int, head: int) -> None:
    key = f"pb_att_{spec.to_json()}_{layer}_{head}"
    if key not in st.session_state:
        if access.read_only():
            return
        if not st.button(f"Show head L{layer}H{head}'s attention pattern", key="pb_cell_att",
                         help="One forward pass of the first pair's clean, corrupted and noised prompts (loads the model once per server)."):
            return
        got = runtime.attention_view(spec, layer, head)
        if got is None:
            return
        st.session_state[key] = got
    att = st.session_state[key]
    cols = st.columns(3)
    for col, (name, toks) in zip(cols, (("clean", att["clean_tokens"]), ("corrupt", att["corrupt_tokens"]), ("noised", att["clean_tokens"]))):
        col.altair_chart(charts.attention_heatmap(att[name], toks, toks, f"L{layer}H{head} · {name}", cell=11), width="content")
