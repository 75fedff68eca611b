"""Drawing helpers: page setup, copy boxes, token and result tables, errors,
a chart's PNG/SVG buttons and the stored result's caption.

Every user string that reaches HTML here is escaped (``html.escape``).
"""

from __future__ import annotations

import html
import json
import os
from typing import Mapping, Sequence

import streamlit as st

from patching.core.errors import PatchboardError
from ui import timing
from ui.plain import error_line, md_plain

__all__ = ["FAVICON", "page_setup", "copy_box", "show_tokens", "show_table", "show_error", "chart_downloads", "stored_caption",
           "imported_note", "imported_suffix"]

FAVICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "favicon.png")


def page_setup(title: str, icon: str | None = None, layout: str = "wide") -> None:
    """Page config and the page title. Call first on every page. Safe to call
    again when ``app.py`` already set the config (Streamlit allows it)."""
    st.set_page_config(page_title=f"{title} · Patchboard", page_icon=icon or FAVICON, layout=layout)
    st.session_state.setdefault("pb_page", title)
    timing.mark(f"page {title} (its imports done)")


def copy_box(text: str, button: str = "Copy", aria: str = "text to copy", absolute_link: bool = False, rows: int = 1) -> None:
    """A read-only text box with a visible Copy button (clipboard API, with a
    select-and-copy fallback). ``absolute_link``: a text starting with ``?``
    is prefixed with the page's own address in the browser. ``rows`` > 1: a
    wrapping text area of that many lines."""
    safe = html.escape(text, quote=True)
    fix = ("if (i.value.startsWith('?')) { try { const l = window.parent.location; i.value = l.origin + l.pathname + i.value; } catch (e) {} }"
           if absolute_link else "")
    style = ("flex:1; min-width:0; padding:6px 8px; border:1px solid #c9ccd3; border-radius:6px; "
             "font:13px ui-monospace, monospace; color:#31333f; background:#f8f9fb; resize:none")
    attrs = f'id="pb-text" readonly aria-label="{html.escape(aria, quote=True)}" style="{style}" onclick="this.select()"'
    box = f"<textarea {attrs} rows={rows}>{html.escape(text)}</textarea>" if rows > 1 else f'<input {attrs} value="{safe}">'
    st.iframe(
        f"""
<div style="font-family: 'Source Sans Pro', sans-serif; display:flex; gap:8px; align-items:center">
 {box}
 <button id="pb-copy" style="padding:6px 14px; border-radius:6px; border:1px solid #3b5bdb; background:#3b5bdb; color:white; cursor:pointer; font-size:14px; white-space:nowrap">{html.escape(button)}</button>
</div>
<script>
const b = document.getElementById('pb-copy'), i = document.getElementById('pb-text');
{fix}
b.onclick = async () => {{
  i.select();
  let ok = false;
  try {{ await navigator.clipboard.writeText(i.value); ok = true; }} catch (e) {{
    try {{ ok = document.execCommand('copy'); }} catch (e2) {{}}
  }}
  b.textContent = ok ? 'Copied ✓' : 'Press Ctrl+C';
  setTimeout(() => b.textContent = {json.dumps(button)}, 2000);
}};
</script>
""",
        height=30 + 18 * rows,
    )


def show_error(err: BaseException | str) -> None:
    """One readable banner for a user-facing error (a PatchboardError names the
    field at fault); anything else is reported briefly, never as a traceback."""
    if isinstance(err, PatchboardError):
        st.error(error_line(err.field, err.message), icon=":material/warning:")
    elif isinstance(err, str):
        st.error(err, icon=":material/warning:")
    else:
        st.error(f"Something went wrong ({type(err).__name__}: {md_plain(str(err), 300)}). Please report it with the share link.", icon=":material/warning:")


def chart_downloads(chart, name: str, n_more: int = 0) -> list:
    """The PNG and SVG buttons under a chart (an Altair chart or its
    Vega-Lite spec), saved as ``patchboard_{name}.png/.svg`` and drawn only
    when pressed; returns ``n_more`` further columns of the same row, for
    other downloads beside them."""
    from ui import charts

    cols = st.columns([1, 1] + [1] * n_more + [6 - n_more])
    cols[0].download_button("PNG", data=lambda: charts.to_bytes(chart, "png"), file_name=f"patchboard_{name}.png", mime="image/png",
                            key=f"pb_png_{name}", on_click="ignore", icon=":material/image:")
    cols[1].download_button("SVG", data=lambda: charts.to_bytes(chart, "svg"), file_name=f"patchboard_{name}.svg", mime="image/svg+xml",
                            key=f"pb_svg_{name}", on_click="ignore", icon=":material/polyline:")
    return cols[2:2 + n_more]


def _utc(t) -> str:
    import pandas as pd

    try:
        return pd.to_datetime(float(t), unit="s").strftime("%Y-%m-%d %H:%M") + " UTC"
    except (TypeError, ValueError, OverflowError):
        return "unknown time"


def stored_caption(meta: Mapping, *details: str, how: str = "Read from the store", provenance: Mapping | None = None) -> None:
    """The caption above a stored result: how it got here, when it was
    stored, its compute time, then ``details`` (rows, layers...); every part
    plain text (a detail may quote a stored or imported value). An imported
    result says so first, with its bundle, when and on which weights
    (:func:`imported_note`)."""
    from patching.analysis.formatting import fmt

    created = _utc(meta.get("created_at")) if meta.get("created_at") else "just now"
    parts = [how, f"stored {created}", f"compute time {fmt(meta.get('compute_seconds'), 3)} s", *details]
    st.caption(" · ".join(md_plain(p, 400) for p in parts))
    if provenance and provenance.get("origin") == "imported":
        imported_note(provenance)


def imported_note(provenance: Mapping) -> None:
    """An imported result's line: not computed on this server (from which
    bundle, when, on which weights, whether it was verified); a computation
    of the same view here replaces it."""
    weights = {"same": "the same weights as here", "other": "other weights than here", "unknown": "weights not loaded here yet"}
    checked = "verified by recomputing it here" if provenance.get("verified") else "not recomputed here"
    text = (f"imported from {md_plain(provenance.get('bundle') or 'a bundle', 120)} on {md_plain(_utc(provenance.get('at')))}, "
            f"computed on {md_plain(weights.get(str(provenance.get('weights_here')), 'unknown weights'))} "
            f"({md_plain(str(provenance.get('weights') or '')[:12])}); {checked}. Computing this view here replaces it.")
    st.caption(f":orange-badge[:material/move_to_inbox: imported] These numbers were {text}")


def imported_suffix(res) -> str:
    """" (imported)" after a number's label when ``res`` was imported, else ""."""
    return " (imported)" if getattr(res, "imported", False) else ""


def show_tokens(clean: Sequence[str], corrupt: Sequence[str], key_positions: Sequence[int] | None = None,
                labels: Sequence[str] | None = None, caption: str | None = None) -> None:
    """The clean and corrupted prompts' tokens aligned by position; positions
    where they differ are highlighted yellow, key positions (what Gaussian
    noise blurs) are outlined, task roles (S1, IO, S2, END...) labelled."""
    from patching.analysis.formatting import show_token, token_alignment

    t = token_alignment(clean, corrupt, key_positions, labels)
    head = "".join(
        f"<th title='position {r.pos}'>{r.pos}<br><span class='pb-role'>{html.escape(r.role)}</span></th>" for r in t.itertuples()
    )

    def row(name: str, col: str) -> str:
        cells = []
        for r in t.itertuples():
            cls = []
            if r.differs:
                cls.append("pb-diff")
            if r.key:
                cls.append("pb-key")
            tip = f"position {r.pos}: {getattr(r, col)!r}" + (" · differs" if r.differs else "") + (" · key position" if r.key else "")
            cells.append(f"<td class='{' '.join(cls)}' title='{html.escape(tip, quote=True)}'>{html.escape(show_token(getattr(r, col)))}</td>")
        return f"<tr><th class='pb-rowh'>{html.escape(name)}</th>{''.join(cells)}</tr>"

    st.html(
        f"""
<style>
.pb-tok {{ border-collapse: separate; border-spacing: 2px; font-family: ui-monospace, monospace; font-size: 13px; }}
.pb-tok th {{ font-weight: 400; color: #6b7280; font-size: 11px; text-align: center; padding: 0 2px; }}
.pb-tok th.pb-rowh {{ text-align: right; color: #31333f; font-size: 13px; font-weight: 600; padding-right: 6px; font-family: sans-serif; }}
.pb-tok td {{ background: #f1f3f5; border-radius: 4px; padding: 2px 5px; white-space: pre; text-align: center; color: #1f2328; }}
.pb-tok td.pb-diff {{ background: #ffe066; font-weight: 700; }}
.pb-tok td.pb-key {{ outline: 2px solid #d6007e; outline-offset: -2px; }}
.pb-role {{ color: #3b5bdb; font-weight: 600; }}
.pb-legend span {{ display: inline-block; padding: 0 6px; border-radius: 4px; margin-right: 10px; font-size: 12px; }}
</style>
<div style="overflow-x:auto"><table class="pb-tok" aria-label="clean and corrupted tokens">
<tr><th></th>{head}</tr>{row("clean", "clean")}{row("corrupted", "corrupt")}</table></div>
<div class="pb-legend" style="margin-top:4px">
<span style="background:#ffe066">differs between the prompts</span>
<span style="outline:2px solid #d6007e; outline-offset:-2px">key position (noised by gn)</span>
<span style="background:#f1f3f5">· = space</span></div>
"""
    )
    if caption:
        st.caption(caption)


def show_table(df, number_formats: Mapping[str, str] | None = None, signed: Sequence[str] = (), caption: str | None = None) -> None:
    """A small static table as plain HTML (no data-grid JavaScript to load,
    so it costs nothing on the way to the first chart). ``signed`` columns are
    tinted blue (positive) / red (negative); ``number_formats`` maps a column
    to a format spec such as ``.5f``."""
    import pandas as pd

    fmts = dict(number_formats or {})
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                txt, style = "", ""
            elif c in fmts and isinstance(v, (int, float)):
                txt = format(float(v), fmts[c])
                style = ""
            else:
                txt, style = str(v), ""
            if c in signed and isinstance(v, (int, float)) and not pd.isna(v):
                style = "color:#1f4e9c" if v > 0 else "color:#b02a37" if v < 0 else ""
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td style='{style}{';text-align:right' if num else ''}'>{html.escape(txt)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    st.html(
        "<style>.pb-table{border-collapse:collapse;font-size:14px;width:100%}"
        ".pb-table th{text-align:left;color:#555;font-weight:600;border-bottom:2px solid #dee2e6;padding:4px 8px}"
        ".pb-table td{border-bottom:1px solid #eef0f3;padding:3px 8px;font-variant-numeric:tabular-nums}</style>"
        f"<table class='pb-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if caption:
        st.caption(caption)
