"""Patch: choose a model, prompts, corruption, metric, direction and component;
see the stored result at once or compute it (Run); share the exact view.

The result is drawn before the sidebar's widgets, so a shared link's chart
reaches the browser first; the sidebar is drawn at the end of every run.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from patching.core.errors import PatchboardError
from patching.core.spec import HEAD_BY_POS_COMPONENTS, HEAD_COMPONENTS, Spec
from patching.analysis.formatting import baseline_sentences, fmt
from ui.patch_result import cli_block, draw_result
from ui.plain import md_plain
from ui import access, charts, panel, runtime, timing, url
from ui import html as ui_html

ui_html.page_setup("Patch")
widgets = panel.spec_panel()
st.title("Activation patching")
st.caption(
    "Run the model on a **clean** prompt and on a **corrupted** one, swap one piece of its computation between the two runs, "
    "and measure how much of the answer that piece carries. New to this? Open **How to read this** in the menu."
)


def pairs_list(spec: Spec) -> None:
    """Every pair the result averages over (``python -m patching pairs``)."""
    try:
        pv = runtime.token_preview(spec)
    except PatchboardError:
        return
    rows = pv.get("pairs")
    if not rows:
        return
    with st.expander(f"All {len(rows)} prompt pair(s) this result averages over"):
        df = pd.DataFrame(rows)
        shown = df.assign(answer=df["answer"].map(repr), counter_answer=df["counter_answer"].map(repr))
        ui_html.show_table(shown, caption="Key positions count BOS as 0; Gaussian noise perturbs them. "
                                          "The same list as `python -m patching pairs` with this view's flags.")
        st.download_button("pairs.csv", data=df.to_csv(index=False), file_name="pairs.csv", mime="text/csv",
                           key="pb_pairs_csv", on_click="ignore", icon=":material/download:")


def attention_section(spec: Spec, res) -> None:
    """A head's attention pattern on the clean, corrupted and noised prompts
    (Zhang & Nanda §3: Gaussian noise can take a head off-distribution)."""
    with st.expander("Attention pattern of one head: clean, corrupted and noised prompt"):
        st.caption("Where one head looks (rows: query positions, columns: the positions it attends to) on the first pair's "
                   f"clean prompt, its corrupted prompt and the clean prompt with Gaussian noise at the key positions "
                   f"(scale {spec.noise_scale:g}σ, the first noise sample of seed {spec.seed}). Computing it loads the model.")
        best = None
        if res is not None and spec.component in HEAD_COMPONENTS + HEAD_BY_POS_COMPONENTS and res.table["head"].notna().any():
            t = res.table.dropna(subset=[spec.metric])
            best = t.loc[t[spec.metric].abs().idxmax()] if len(t) else None
        if access.read_only():
            access.read_only_note("Loading the model")
            return
        c1, c2, c3 = st.columns([1, 1, 2])
        layer = c1.number_input("Layer", min_value=0, value=int(best["layer"]) if best is not None else 0, step=1, key="pb_att_layer")
        head = c2.number_input("Head", min_value=0, value=int(best["head"]) if best is not None else 0, step=1, key="pb_att_head")
        if c3.button("Show attention pattern", key="pb_att_go", icon=":material/visibility:"):
            got = runtime.attention_view(spec, int(layer), int(head))
            if got is not None:
                cols = st.columns(3)
                for col, (name, toks) in zip(cols, (("clean", got["clean_tokens"]), ("corrupt", got["corrupt_tokens"]),
                                                    ("noised", got["clean_tokens"]))):
                    with col:
                        st.altair_chart(charts.attention_heatmap(got[name], toks, toks, f"L{got['layer']}H{got['head']} · {name}", cell=11),
                                        width="content")


def draw_header(spec: Spec, res) -> bool:
    """Header, link, the prompts and (when stored) the baselines; False when the
    prompts are invalid for this model."""
    st.markdown(f"#### {md_plain(spec.label())}")
    url.copy_link(spec, view_extra)
    st.subheader("The prompts")
    if res is not None:
        m = res.meta
        ui_html.show_tokens(m.get("clean_tokens", []), m.get("corrupt_tokens", []), m.get("key_positions"), m.get("position_labels"),
                       caption=f"First of {md_plain(m.get('n_pairs', spec.n_pairs))} pair(s), as the model reads them (position 0 is the start token).")
    else:
        try:
            pv = runtime.token_preview(spec)
        except PatchboardError as e:
            ui_html.show_error(e)
            return False
        if "unavailable" in pv:
            st.info(pv["unavailable"].capitalize() + ".")
        else:
            ui_html.show_tokens(pv["clean_tokens"], pv["corrupt_tokens"], pv["key_positions"], pv["position_labels"],
                           caption=f"First of {pv['n_pairs']} pair(s), as the model reads them (position 0 is the start token). "
                                   f"Right answer {md_plain(repr(pv['answer']))}, wrong answer {md_plain(repr(pv['counter_answer']))}.")
    pairs_list(spec)
    attention_section(spec, res)
    st.subheader("Result")
    if res is None:
        return True
    meta = res.meta
    fresh = st.session_state.get("pb_just_computed") == spec.with_(metric="logit_diff").to_json()
    ui_html.stored_caption(meta, f"{meta.get('n_layers')} layers × {meta.get('n_heads')} heads", f"{meta.get('rows', meta.get('n_pairs'))} rows",
                           how="Computed just now and stored" if fresh or not res.from_store else "Read from the store",
                           provenance=res.provenance)
    runtime.recompute_button(res, "patch")
    b = res.baselines
    imp = ui_html.imported_suffix(res)
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Clean logit diff" + imp, fmt(b.get("clean_logit_diff"), 4), help="Right-answer logit minus wrong-answer logit, averaged over the clean prompts.")
    c2.metric("Corrupt logit diff" + imp, fmt(b.get("corrupt_logit_diff"), 4),
              help="The same on the corrupted prompts (under mean or zero ablation: in the ablated run, every piece replaced at once).")
    c3.metric("Clean P(answer)" + imp, fmt(b.get("clean_prob"), 4), help="Probability of the right answer on the clean prompts.")
    c4.metric("Corrupt P(answer)" + imp, fmt(b.get("corrupt_prob"), 4), help="Probability of the right answer on the corrupted prompts.")
    c5.metric("Corrupt KL" + imp, fmt(b.get("corrupt_kl"), 4), help="How far the corrupted prediction is from the clean one (KL divergence).")
    st.caption(md_plain(" ".join(baseline_sentences(b, spec)), 4000))
    for w in meta.get("warnings") or []:
        st.warning(f"Note: {md_plain(w, 600)}.")
    return True


spec = widgets.spec
view_extra: dict = {}
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the results appear once it is valid.")
else:
    res = runtime.lookup_result(spec)
    timing.mark("store read")
    header_box = st.container()
    chart_box = st.container()
    if res is not None:
        # Charts first (they reach the browser first), then everything above and below them.
        draw_result(spec, res, chart_box, view_extra)
        with header_box:
            draw_header(spec, res)
    else:
        with header_box:
            ok = draw_header(spec, None)
        if ok and access.read_only():
            access.read_only_note("Computing a result that is not stored")
            cli_block(spec)
        elif ok:
            st.info(
                "This result is not stored yet. Press **Run patching** to compute it: it runs one patched forward pass per "
                "component and takes from seconds to minutes depending on the model, the number of pairs and the component. "
                "It is then stored, so this link shows it at once afterwards."
            )
            if st.button("Run patching", type="primary", key="pb_run", icon=":material/play_arrow:"):
                if runtime.run_spec(spec) is not None:
                    st.session_state["pb_just_computed"] = spec.with_(metric="logit_diff").to_json()
                    st.rerun()  # redraw from the store
            cli_block(spec)
    url.write_url(spec, view_extra)
widgets.render()
timing.mark("end")
