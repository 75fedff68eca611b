"""The error of an approximate result in plain view: its agreement with the
exact result of the same settings (Patch page: atp/atp_star/ig; Paths page:
EAP/EAP-IG), or one button that computes the exact one for comparison.

Numbers from :mod:`patching.analysis.estimate_error`; this module only lays them out.
"""

from __future__ import annotations

from typing import Any, Callable

import altair as alt
import pandas as pd
import streamlit as st

from patching.analysis.estimate_error import agreement, aligned, sign_flags, sign_note
from patching.analysis.formatting import fmt
from patching.results import UNSIGNED_METHODS
from ui import html as ui_html
from ui import access, runtime

NAMES = {"atp": "attribution patching (AtP)", "atp_star": "AtP*", "ig": "integrated gradients",
         "eap": "edge attribution patching (EAP)", "eap_ig": "EAP-IG"}


def _label(row: Any) -> str:
    c = row["component"]
    if c == "embed":
        s = "embed"
    elif c == "mlp":
        s = f"L{int(row['layer'])} MLP"
    elif pd.notna(row.get("head")):
        s = f"L{int(row['layer'])}H{int(row['head'])}"
    else:
        s = f"L{int(row['layer'])} {c}" if pd.notna(row.get("layer")) else str(c)
    lab = str(row.get("pos_label") or "")
    return s + (f" @ {lab.strip()}" if lab.strip() else "")


def scatter(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, method: str, width: int = 420) -> alt.LayerChart:
    """Approximate against exact, one point per cell, with the y = x line."""
    both = aligned(approx, exact, metric, method)
    both = both[both["measured"] & both["approx"].notna() & both["exact"].notna()].copy()
    both["cell"] = [_label(r) for r in both.to_dict("records")]
    lo = float(min(both["approx"].min(), both["exact"].min())) if len(both) else 0.0
    hi = float(max(both["approx"].max(), both["exact"].max())) if len(both) else 1.0
    name = NAMES.get(method, method)
    shown = f"|{metric}|" if method in UNSIGNED_METHODS else metric
    pts = alt.Chart(both).mark_circle(size=36, opacity=0.7).encode(
        x=alt.X("exact:Q", title=f"exact ({shown})", scale=alt.Scale(domain=[lo, hi])),
        y=alt.Y("approx:Q", title=f"{method} ({shown})", scale=alt.Scale(domain=[lo, hi])),
        tooltip=[alt.Tooltip("cell:N"), alt.Tooltip("exact:Q", format=".5f"), alt.Tooltip("approx:Q", format=".5f"),
                 alt.Tooltip("error:Q", format="+.5f")],
    )
    line = alt.Chart(pd.DataFrame({"x": [lo, hi], "y": [lo, hi]})).mark_line(color="#9ca3af", strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    return (line + pts).properties(width=width, height=width, title=f"{name} against exact: on the dashed line they agree")


def show(approx: pd.DataFrame, exact: pd.DataFrame, metric: str, method: str, key: str) -> dict[str, Any]:
    """Pearson, Spearman, top-k overlap, the largest errors and the scatter."""
    a = agreement(approx, exact, metric, method=method)
    name = NAMES.get(method, method)
    what = f"|{metric}|: AtP* estimates the size of an effect, not its sign, so it is compared with |exact|" if a["unsigned"] else metric
    skipped = (f"; {a['unmeasured']} cells patched only where both prompts are identical are zero by construction in both and left out"
               if a["unmeasured"] else "")
    st.markdown(f"**How far {name} is from exact patching here** ({what}; {a['cells']} cells{skipped}; the exact result of the same "
                "settings from the store)")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Pearson", fmt(a["pearson"], 3), help="Linear correlation of the estimates with the exact values (1 = on a line).")
    c2.metric("Spearman", fmt(a["spearman"], 3), help="Rank correlation: 1 = the same order of components.")
    c3.metric(f"Top-{a['k']} overlap", "n/a" if a["top_k_overlap"] != a["top_k_overlap"] else f"{a['top_k_overlap']:.0%}",
              help=f"Share of the {a['k']} largest components (by |value|) that both name.")
    c4.metric("Largest |error|", fmt(a["max_abs_error"], 4), help="The largest absolute difference of one cell.")
    flags = sign_flags(approx, exact, metric, method=method)
    note = sign_note(flags, name)
    if note:
        # Beside the estimate: where it points the wrong way, by position and layer.
        st.warning(note, icon=":material/swap_vert:")
        if flags["pos"].notna().any() and flags["layer"].notna().any():
            from ui.charts import sign_flip_map

            st.altair_chart(sign_flip_map(flags, method), width="content", key=f"{key}_flips")
    col1, col2 = st.columns([1, 1])
    with col1:
        st.altair_chart(scatter(approx, exact, metric, method), width="content", key=f"{key}_scatter")
    with col2:
        worst = a["worst"].copy()
        worst.insert(0, "cell", [_label(r) for r in worst.to_dict("records")])
        worst = worst[["cell", "approx", "exact", "error"]].rename(columns={"approx": method})
        ui_html.show_table(worst, {method: ".5f", "exact": ".5f", "error": "+.5f"}, signed=("error",),
                           caption="The largest absolute errors (estimate − exact).")
    return a


def compare_or_offer(approx_res, exact_request: Any, method: str, metric: str, key: str,
                     run: Callable[[Any, str], Any] | None = None) -> None:
    """The agreement with the stored exact result, or a button computing it."""
    if method == "exact":
        return
    ex = runtime.lookup_result(exact_request)
    st.subheader("Error against exact patching")
    if ex is not None:
        show(approx_res.table, ex.table, metric, method, key)
        return
    if access.read_only():
        st.info("The exact result with these settings is not stored, so the estimate's error is unknown here "
                "(this read-only server computes nothing).")
        return
    st.info("The exact result with these settings is not stored, so the estimate's error is unknown here. "
            "**Compute exact for comparison** runs exact patching with the same settings (one patched run per component), "
            "stores it and shows the agreement.")
    if st.button("Compute exact for comparison", key=f"{key}_exact", icon=":material/compare_arrows:"):
        if (run or runtime.run_request)(exact_request, "Exact patching") is not None:
            st.rerun()
