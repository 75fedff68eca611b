"""Library: every stored result of every kind; open, export as a bundle,
delete, or open a bundle from another machine. Each row says where it came
from (computed here or imported) and, on a shared server, whose it is:
deletes and exports are offered for one's own results only, and read-only
mode offers neither import nor delete (ui/access.py)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pandas as pd
import streamlit as st

from patching import bundles
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.kinds import KINDS
from patching.store import acting_as
from ui.plain import md_plain
from ui import access
from ui import html as ui_html
from ui import runtime, url

ui_html.page_setup("Library")
st.title("Library of stored results")
st.caption("Everything computed on (or imported into) this server: activation sweeps, the sweeps behind Disagreement grids and "
           "their statistics, path sweeps, hypotheses and circuits. Opening one shows it at once, without recomputing.")

#: Which page opens a stored result of each kind (declared with the kind).
OPENS = {name: k.page for name, k in KINDS.items()}

store = runtime.store()
shared = access.shared()

if access.read_only():
    st.caption(":material/lock: This server is read-only: it shows stored results only (no import, no delete).")
else:
    with st.expander("Open a bundle (results exported from another machine)", icon=":material/upload_file:"):
        up = st.file_uploader("Bundle file (.zip)", type=["zip"], key="pb_lib_bundle")
        other = st.checkbox("Also import results computed on other weights of a model", key="pb_lib_other",
                            help="Refused by default: such results open only where those exact weights are loaded.")
        st.caption("Imported results are marked imported wherever they are shown; computing the same view here replaces them. "
                   "`python -m patching import FILE --verify K` recomputes K of them before importing.")
        if up is not None and st.button("Import", key="pb_lib_import", type="primary"):
            try:
                with acting_as(access.identity()):
                    rep = bundles.import_bundle(store, up.getvalue(), other, name=up.name, max_unpacked=bundles.MAX_UNPACKED_APP)
                st.success(f"Imported {rep.added} result(s); {rep.already} were already here.")
            except PatchboardError as e:
                ui_html.show_error(e)

try:
    df = store.list(with_meta=True)
except Exception as e:  # noqa: BLE001 - an unreadable store must not be a traceback
    ui_html.show_error(f"The result store could not be read ({type(e).__name__}); check PATCHBOARD_CACHE_DIR.")
    st.stop()

if df.empty:
    st.info("Nothing is stored yet. Go to **Patch**, choose the settings and press **Run patching**: the result is stored here.")
    url.page_link("pages/1_Patch.py", label="Go to Patch", icon=":material/biotech:")
    st.stop()


def _row(r) -> dict:
    try:
        spec = Spec.from_dict(json.loads(r.spec_json))
    except Exception:  # noqa: BLE001 - an older or foreign spec still lists
        spec = None
    link = url.page_url(OPENS[r.kind], _link_query(r.kind, spec, r.meta_json)) if spec is not None and r.kind in OPENS else None
    owner = r.owner if isinstance(r.owner, str) else None
    return {
        "open": link, "result": r.label, "kind": r.kind, "model": r.model, "fingerprint": str(getattr(r, "model_fingerprint", ""))[:16],
        "task": (spec.task or "custom pairs") if spec else "", "origin": r.origin if isinstance(r.origin, str) else "",
        "by": access.owner_label(owner), "stored (UTC)": r.created,
        "size kB": round(float(r.bytes) / 1024, 1), "compute s": round(float(r.compute_seconds), 1), "key": r.key,
        "_owner": owner, "_custom": spec is None or spec.pairs is not None,
    }


def _link_query(kind: str, spec: Spec, meta_json: str) -> dict[str, str]:
    """The link of a stored result: its spec, then the parameters of the
    request it answers, rebuilt from its stored spec and meta. A row stored
    before that carries the page's query it was written with (``page_query``,
    the page reads its old names): it keeps exactly the link it had."""
    try:
        meta = json.loads(meta_json)
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    extra = {k: str(v) for k, v in (meta.get("page_query") or {}).items()}
    if not extra:
        try:
            extra = KINDS[kind].request(spec, meta).query()
        except (KeyError, TypeError, PatchboardError):
            pass  # a foreign row without its request: the spec alone
    return spec.to_query() | extra


rows = [_row(r) for r in df.itertuples()]
# Shared server: other people's results on their own prompts are theirs (not listed).
rows = [r for r in rows if access.may_list(r["_owner"], r["_custom"])]
if not rows:
    st.info("Nothing of yours is stored yet. Go to **Patch**, choose the settings and press **Run patching**.")
    st.stop()
table = pd.DataFrame(rows)
owner_of = dict(zip(table["key"], table.pop("_owner")))
table = table.drop(columns=["_custom"])
if not shared:
    table = table.drop(columns=["by"])

c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
q = c1.text_input("Filter", placeholder="type to filter, e.g. ioi, gn, mlp_out", key="pb_lib_filter")
kind = c2.selectbox("Kind", ["all"] + sorted(table["kind"].unique()), key="pb_lib_kind")
model = c3.selectbox("Model", ["all"] + sorted(table["model"].unique()), key="pb_lib_model")
task = c4.selectbox("Task", ["all"] + sorted(t for t in table["task"].unique() if t), key="pb_lib_task")
view = table
if q.strip():
    mask = view.drop(columns=["open"]).astype(str).apply(lambda col: col.str.contains(q.strip(), case=False, regex=False)).any(axis=1)
    view = view[mask]
for col, val in (("kind", kind), ("model", model), ("task", task)):
    if val != "all":
        view = view[view[col] == val]
view = view.reset_index(drop=True)

st.caption(f"{len(view)} of {len(table)} stored result(s), newest first. Click **Open** to see one; tick rows to export or delete them.")
event = st.dataframe(
    view, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key="pb_lib_table",
    column_config={
        "open": st.column_config.LinkColumn("open", display_text="Open ↗", help="Open this result (new tab)"),
        "result": st.column_config.TextColumn("result", width="large"),
        "compute s": st.column_config.NumberColumn("compute s", format="%.1f", help="How long the computation took"),
        "key": st.column_config.TextColumn("key", help="The store key (python -m patching export --key ...)"),
        "fingerprint": st.column_config.TextColumn("fingerprint", help="The weights the result was computed on "
                                                   "(python -m patching models list shows each known model's)"),
        "origin": st.column_config.TextColumn("origin", help="computed on this server, or imported from a bundle (computing the same "
                                              "view here replaces an imported result); empty: stored before this was recorded"),
        "by": st.column_config.TextColumn("by", help="who made it on this shared server: you, someone else, or the server "
                                          "(the demo, the command line)"),
    },
)
picked = [view["key"][i] for i in (event.selection.rows if event is not None else []) if i < len(view)]
keys = [k for k in (picked or list(view["key"])) if access.may_export(owner_of.get(k))]
label = f"{len(picked)} selected" if picked else f"all {len(view)} shown"
if shared and len(keys) < len(picked or view["key"]):
    label += f"; {len(picked or view['key']) - len(keys)} made by others left out"
deletable = [k for k in picked if access.may_delete(owner_of.get(k))]

b1, b2, _ = st.columns([2, 2, 4])
b1.download_button(f"Download bundle ({label})", data=lambda: bundles.bundle_bytes(store, keys), file_name="patchboard_bundle.zip",
                   mime="application/zip", key="pb_lib_export", on_click="ignore", icon=":material/download:", disabled=not keys)
if picked and not deletable and not access.read_only():
    b2.caption("Only results you made can be deleted on this shared server.")
if deletable:
    others = len(picked) - len(deletable)
    if b2.button(f"Delete {len(deletable)} selected" + (f" (yours; {others} by others kept)" if others else ""), key="pb_lib_delete",
                 icon=":material/delete:"):
        st.session_state["pb_lib_confirm"] = deletable
    pending = [k for k in st.session_state.get("pb_lib_confirm") or [] if access.may_delete(owner_of.get(k))]
    if pending:
        st.warning(f"Delete {len(pending)} stored result(s)? They are gone for everyone on this server (export a bundle first to keep them).")
        y, n, _ = st.columns([1, 1, 6])
        if y.button("Yes, delete", key="pb_lib_yes", type="primary") and not access.refuse("Deleting"):
            gone = sum(store.delete(k) for k in pending)
            st.session_state.pop("pb_lib_confirm", None)
            st.success(f"Deleted {gone} result(s).")
            st.rerun()
        if n.button("Cancel", key="pb_lib_no"):
            st.session_state.pop("pb_lib_confirm", None)
            st.rerun()
st.caption("The same from the command line: `python -m patching export --key KEY --out results.zip` and "
           "`python -m patching import results.zip`.")

# The newest few also as in-app links (same tab).
st.markdown("**Recently stored**")
for r in table.head(8).to_dict("records"):
    if r["open"]:
        query = dict(parse_qsl(r["open"].partition("?")[2], keep_blank_values=True))
        url.page_link(f"pages/{OPENS[r['kind']]}", label=f"{md_plain(r['result'], 200)}  ·  {r['stored (UTC)']}  ·  {r['compute s']:.0f} s"
                      + ("  ·  imported" if r["origin"] == "imported" else ""),
                      query_params=query or None, icon=":material/show_chart:")
