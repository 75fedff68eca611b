"""Library: every stored result (spec summary, date, compute time); open any."""

from __future__ import annotations

import json
import pandas as pd
import streamlit as st

from patching.core.spec import Spec
from ui.plain import md_plain
from ui import runtime, url
from ui import html as ui_html

ui_html.page_setup("Library")
st.title("Library of stored results")
st.caption("Everything computed on this server so far. Opening a stored result shows it at once, without recomputing.")

#: Which page opens a stored result of each kind (colleagues' pages add theirs).
OPENS = {"activation": "1_Patch.py"}

try:
    df = runtime.store().list()
except Exception as e:  # noqa: BLE001 - an unreadable store must not be a traceback
    ui_html.show_error(f"The result store could not be read ({type(e).__name__}); check PATCHBOARD_CACHE_DIR.")
    st.stop()

if df.empty:
    st.info("Nothing is stored yet. Go to **Patch**, choose the settings and press **Run patching**: the result is stored here.")
    url.page_link("pages/1_Patch.py", label="Go to Patch", icon=":material/biotech:")
    st.stop()

rows = []
for r in df.itertuples():
    link = None
    summary = r.label
    spec = None
    try:
        spec = Spec.from_dict(json.loads(r.spec_json))
    except Exception:  # noqa: BLE001 - another kind of record, or an older spec
        spec = None
    if spec is not None and r.kind in OPENS:
        link = url.page_url(OPENS[r.kind], spec.to_query())
    rows.append({
        "open": link,
        "result": summary,
        "stored (UTC)": r.created,
        "compute s": round(float(r.compute_seconds), 1),
        "kind": r.kind,
        "model": r.model,
        "task": (spec.task or "custom pairs") if spec else "",
        "n pairs": spec.n_pairs if spec else None,
        "corruption": spec.corruption if spec else "",
        "direction": spec.direction if spec else "",
        "component": spec.component if spec else "",
    })
table = pd.DataFrame(rows)

c1, c2 = st.columns([3, 1])
q = c1.text_input("Filter", placeholder="type to filter, e.g. ioi, gn, mlp_out", key="pb_lib_filter")
kinds = sorted(table["kind"].unique())
kind = c2.selectbox("Kind", ["all"] + kinds, key="pb_lib_kind")
view = table
if q.strip():
    mask = view.drop(columns=["open"]).astype(str).apply(lambda col: col.str.contains(q.strip(), case=False, regex=False)).any(axis=1)
    view = view[mask]
if kind != "all":
    view = view[view["kind"] == kind]

st.caption(f"{len(view)} of {len(table)} stored result(s), newest first. Click **Open** to see one.")
st.dataframe(
    view,
    hide_index=True,
    width="stretch",
    column_config={
        "open": st.column_config.LinkColumn("open", display_text="Open ↗", help="Open this result (new tab)"),
        "result": st.column_config.TextColumn("result", width="large"),
        "compute s": st.column_config.NumberColumn("compute s", format="%.1f", help="How long the computation took"),
    },
)

# The newest few also as in-app links (same tab).
st.markdown("**Recently stored**")
for r in df.head(8).itertuples():
    try:
        spec = Spec.from_dict(json.loads(r.spec_json))
    except Exception:  # noqa: BLE001
        continue
    if r.kind in OPENS:
        url.page_link(f"pages/{OPENS[r.kind]}", label=f"{md_plain(r.label, 200)}  ·  {r.created}  ·  {float(r.compute_seconds):.0f} s",
                     query_params=spec.to_query(), icon=":material/show_chart:")
