"""Patch: choose a model, prompts, corruption, metric, direction and component;
see the stored result at once or compute it (Run); share the exact view.

The result is drawn before the sidebar's widgets, so a shared link's chart
reaches the browser first; the sidebar is drawn at the end of every run.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from patching.core.errors import PatchboardError
from patching.core.spec import HEAD_BY_POS_COMPONENTS, HEAD_COMPONENTS, Spec
from patching.results import table_records
from patching.analysis.view import baseline_sentences, fmt, pairs_to_text, top_components, with_detection
from ui.plain import md_plain
from ui import extras
from ui import agreement, charts, drill, panel, runtime, url
from ui import html as ui_html
from ui import timing

ui_html.page_setup("Patch")
widgets = panel.spec_panel()
st.title("Activation patching")
st.caption(
    "Run the model on a **clean** prompt and on a **corrupted** one, swap one piece of its computation between the two runs, "
    "and measure how much of the answer that piece carries. New to this? Open **How to read this** in the menu."
)


def pick_view(name: str, options: list, default) -> str:
    """Key of a view selectbox whose choice travels in the URL as ``name``."""
    key = url.url_widget(name, None, extras.text(name))
    cur = st.session_state.get(key)
    match = [o for o in options if str(o) == str(cur)]
    st.session_state[key] = match[0] if match else default
    return key


def draw_result(spec: Spec, res, chart_box, view: dict) -> None:
    """The charts (first, into ``chart_box``), then detection, table, downloads."""
    meta, metric = res.meta, spec.metric
    t, th = with_detection(res.table, metric)
    iv = runtime.intervals(res)
    if iv is not None:
        t = t.join(iv[["value_lo", "value_hi", "detect_stability"]])
    pos_order = list(dict.fromkeys(t.sort_values("pos")["pos_label"])) if t["pos"].notna().any() else None
    title = f"{charts.METRIC_TITLES.get(metric, metric)} · {spec.direction} · {spec.corruption}"
    shown: list[tuple[str, object]] = []

    def chart(name: str, build, *view_key) -> tuple[str, dict]:
        # Built once per stored result and view (Altair skipped on a link opened again).
        return name, runtime.chart_spec((res.key, metric, spec.component, name, *view_key), build)

    with chart_box:
        if spec.component in HEAD_COMPONENTS:
            shown.append(chart("heads", lambda: charts.heatmap(t, "head", "layer", metric=metric, select=True, title=f"Heads: {title}",
                                                               x_title="head", y_title="layer")))
        elif spec.component in HEAD_BY_POS_COMPONENTS:
            best = t.loc[t["value"].abs().idxmax()] if t["value"].notna().any() else t.iloc[0]
            heads = sorted(int(h) for h in t["head"].dropna().unique())
            c1, c2 = st.columns(2)
            pos_choice = c1.selectbox("Position for the layer × head map", pos_order,
                                      key=pick_view("view-pos", pos_order, best["pos_label"]),
                                      help="Head-by-position results have three axes; pick the position to show.")
            head_choice = c2.selectbox("Head for the layer × position map", heads, key=pick_view("view-head", heads, int(best["head"])))
            view.update({"view-pos": pos_choice, "view-head": head_choice})
            shown.append(chart("heads_at_position", lambda: charts.heatmap(
                t[t["pos_label"] == pos_choice], "head", "layer", metric=metric, select=True,
                title=f"Heads at {pos_choice.strip()}: {title}", x_title="head", y_title="layer"), pos_choice))
            shown.append(chart("head_by_position", lambda: charts.heatmap(
                t[t["head"] == head_choice], "pos_label", "layer", metric=metric, select=True, title=f"Head {head_choice} by position: {title}",
                x_title="position (token)", y_title="layer", x_sort=pos_order), head_choice))
        else:
            wtxt = f" (window {spec.window})" if spec.window > 1 else ""
            shown.append(chart("layer_by_position", lambda: charts.heatmap(
                t, "pos_label", "layer", metric=metric, select=True, title=f"{spec.component}{wtxt}: {title}",
                x_title="position (token)", y_title="layer", x_sort=pos_order), spec.window))
        events = []
        for name, ch in shown:
            events.append(st.vega_lite_chart(ch, width="content", on_select="rerun", selection_mode="cell", key=f"pb_sel_{name}"))
            timing.mark("chart sent")
            d1, d2, _ = st.columns([1, 1, 6])
            d1.download_button("PNG", data=lambda ch=ch: charts.to_bytes(ch, "png"), file_name=f"patchboard_{name}.png", mime="image/png",
                               key=f"pb_png_{name}", on_click="ignore", icon=":material/image:")
            d2.download_button("SVG", data=lambda ch=ch: charts.to_bytes(ch, "svg"), file_name=f"patchboard_{name}.svg",
                               mime="image/svg+xml", key=f"pb_svg_{name}", on_click="ignore", icon=":material/polyline:")
        cell = drill.current_cell(next((e for e in events if e and e.get("selection", {}).get("cell")), None))
        view["cell"] = cell or None
        if cell:
            drill.drill_down(spec, res, cell)
        else:
            st.caption("Click a cell to open that component: its value under every metric, its effect by position and, for a head, "
                       "its attention pattern.")
        if spec.window > 1:
            labels = {int(p): lab for p, lab in zip(t["pos"], t["pos_label"])}
            kp = [p for p in (meta.get("key_positions") or []) if p in labels]
            default_pos = kp[-1] if kp else int(t.groupby("pos")["value"].apply(lambda v: v.abs().max()).idxmax())
            opts = sorted(labels)
            pos_choice = st.columns([2, 5])[0].selectbox("Position for the window line chart", opts, format_func=lambda p: labels[p].strip(),
                                      key=pick_view("view-pos", opts, default_pos),
                                      help="The joint effect of the window and the sum of single layers, at this position.")
            view["view-pos"] = pos_choice
            lc = charts.window_lines(res.table, metric, pos_choice, labels[pos_choice].strip(),
                                     title=f"Window of {spec.window} layers vs the summation baseline at {labels[pos_choice].strip()}")
            st.altair_chart(lc, width="content")
            d1, d2, _ = st.columns([1, 1, 6])
            d1.download_button("PNG", data=lambda: charts.to_bytes(lc, "png"), file_name="patchboard_window_lines.png", mime="image/png",
                               key="pb_png_window_lines", on_click="ignore", icon=":material/image:")
            d2.download_button("SVG", data=lambda: charts.to_bytes(lc, "svg"), file_name="patchboard_window_lines.svg",
                               mime="image/svg+xml", key="pb_svg_window_lines", on_click="ignore", icon=":material/polyline:")

    # ---------------------------------------------------------------- detection + top table
    n_pos = int((t["detected"] == "positive").sum())
    n_neg = int((t["detected"] == "negative").sum())
    if th.get("sd") and th["sd"] == th["sd"]:
        st.markdown(
            f"**2-SD rule** (Zhang & Nanda): a component is *detected* when its effect is more than 2 standard deviations from "
            f"the mean over all {len(t)} components (outside [{fmt(th['lower'])}, {fmt(th['upper'])}]). "
            f"Detected: **{n_pos} positive** (solid black outline) and **{n_neg} negative** (dashed magenta outline: "
            f"the component works *against* the answer)."
        )
    else:
        st.markdown("**2-SD rule**: every component has (almost) the same effect here, so nothing is detected.")
    st.markdown("**Top components** (largest effect, either sign; z = standard deviations from the mean)")
    top0 = top_components(t, 15)
    if iv is not None:
        from patching.analysis.uncertainty import width_note

        st.altair_chart(charts.top_bars(top0, metric), width="content")
        note = width_note(res.table, iv, metric)
        if note:
            st.warning(note)
        st.caption(f"Bars: 95 % bootstrap intervals over the {meta.get('n_pairs')} prompts (1,000 resamples, seeded); "
                   "'detected in' = the share of resamples in which the 2-SD rule detects the component.")
    top = top0.rename(columns={"value": metric, "pos_label": "token", "label": "component", "value_lo": "95% from", "value_hi": "95% to",
                               "detect_stability": "detected in"})
    if "token" in top.columns:
        top["token"] = top["token"].map(lambda s: str(s).replace(" ", "·"))
    top["detected"] = top["detected"].replace({"positive": "✔ positive", "negative": "✔ negative"})
    ui_html.show_table(top, {metric: ".5f", "z": ".2f", "95% from": ".5f", "95% to": ".5f", "detected in": ".0%"}, signed=(metric,))

    if spec.method != "exact":
        agreement.compare_or_offer(res, spec.with_(method="exact"), spec.method, metric, "pb_agree")

    # ---------------------------------------------------------------- downloads + CLI
    st.markdown("**Download the numbers**")
    export = res.export_table(metric)
    payload = {"spec": spec.to_dict(), "cli": spec.to_cli(), "baselines": res.baselines, "meta": meta,
               "table": table_records(export)}
    e1, e2, _ = st.columns([1, 1, 6])
    e1.download_button("CSV", data=lambda: export.to_csv(index=False), file_name="patchboard_result.csv", mime="text/csv",
                       key="pb_csv", on_click="ignore", icon=":material/table_view:")
    e2.download_button("JSON", data=lambda: json.dumps(payload, indent=1, default=str), file_name="patchboard_result.json",
                       mime="application/json", key="pb_json", on_click="ignore", icon=":material/data_object:")
    runtime.bundle_button([res.key])
    runtime.notebook_button(spec)
    cli_block(spec)


def cli_block(spec: Spec) -> None:
    """The command line that reproduces the numbers (+ the custom pairs file)."""
    st.markdown("**Reproduce these numbers from the command line**")
    ui_html.copy_box(spec.to_cli(), "Copy command", "command line", rows=3)
    if spec.pairs is not None:
        st.download_button("pairs.jsonl", data=pairs_to_text(spec.pairs) + "\n", file_name="pairs.jsonl", mime="application/jsonl",
                           key="pb_pairs_dl", on_click="ignore", icon=":material/download:",
                           help="The custom pairs as the file the command line reads.")


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
                       caption=f"First of {m.get('n_pairs', spec.n_pairs)} pair(s), as the model reads them (position 0 is the start token).")
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
    created = pd.to_datetime(meta.get("created_at"), unit="s").strftime("%Y-%m-%d %H:%M") if meta.get("created_at") else "just now"
    fresh = st.session_state.get("pb_just_computed") == spec.with_(metric="logit_diff").to_json()
    st.caption(f"{'Computed just now and stored' if fresh or not res.from_store else 'Read from the store'} · stored {created} UTC · compute time "
               f"{fmt(meta.get('compute_seconds'), 3)} s · {meta.get('n_layers')} layers × {meta.get('n_heads')} heads · "
               f"{meta.get('rows', meta.get('n_pairs'))} rows")
    b = res.baselines
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Clean logit diff", fmt(b.get("clean_logit_diff"), 4), help="Right-answer logit minus wrong-answer logit, averaged over the clean prompts.")
    c2.metric("Corrupt logit diff", fmt(b.get("corrupt_logit_diff"), 4), help="The same on the corrupted prompts.")
    c3.metric("Clean P(answer)", fmt(b.get("clean_prob"), 4), help="Probability of the right answer on the clean prompts.")
    c4.metric("Corrupt P(answer)", fmt(b.get("corrupt_prob"), 4), help="Probability of the right answer on the corrupted prompts.")
    c5.metric("Corrupt KL", fmt(b.get("corrupt_kl"), 4), help="How far the corrupted prediction is from the clean one (KL divergence).")
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
        if ok:
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
