"""Patch: choose a model, prompts, corruption, metric, direction and component;
see the stored result at once or compute it (Run); share the exact view."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from patching.errors import PatchboardError
from patching.view import baseline_sentences, fmt, pairs_to_text, top_components, with_detection
from ui import charts
from ui import common as ui

ui.page_setup("Patch")
st.title("Activation patching")
st.caption(
    "Run the model on a **clean** prompt and on a **corrupted** one, swap one piece of its computation between the two runs, "
    "and measure how much of the answer that piece carries. New to this? Open **How to read this** in the menu."
)

spec = ui.spec_sidebar()
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the results appear once it is valid.")
    st.stop()
ui.write_url(spec)

res = ui.lookup_result(spec)

# ---------------------------------------------------------------- header + link
st.markdown(f"#### {spec.label()}")
ui.copy_link(spec)

# ---------------------------------------------------------------- prompts
st.subheader("The prompts")
if res is not None:
    m = res.meta
    ui.show_tokens(m.get("clean_tokens", []), m.get("corrupt_tokens", []), m.get("key_positions"), m.get("position_labels"),
                   caption=f"First of {m.get('n_pairs', spec.n_pairs)} pair(s), as the model reads them (position 0 is the start token).")
else:
    try:
        pv = ui.token_preview(spec)
    except PatchboardError as e:
        ui.show_error(e)
        st.stop()
    if "unavailable" in pv:
        st.info(pv["unavailable"].capitalize() + ".")
    else:
        ui.show_tokens(pv["clean_tokens"], pv["corrupt_tokens"], pv["key_positions"], pv["position_labels"],
                       caption=f"First of {pv['n_pairs']} pair(s), as the model reads them (position 0 is the start token). "
                               f"Right answer {pv['answer']!r}, wrong answer {pv['counter_answer']!r}.")

# ---------------------------------------------------------------- run
if res is None:
    st.subheader("Result")
    st.info(
        "This result is not stored yet. Press **Run patching** to compute it: it runs one patched forward pass per "
        "component and takes from seconds to minutes depending on the model, the number of pairs and the component. "
        "It is then stored, so this link shows it at once afterwards."
    )
    if st.button("▶ Run patching", type="primary", key="pb_run"):
        res = ui.run_spec(spec)
        if res is not None:
            st.rerun()  # redraw from the store with the tokens of the computed result
    st.markdown("**Reproduce from the command line**")
    ui.copy_box(spec.to_cli(), "Copy command", "command line", rows=3)
    st.stop()

# ---------------------------------------------------------------- result
meta = res.meta
metric = spec.metric
st.subheader("Result")
created = pd.to_datetime(meta.get("created_at"), unit="s").strftime("%Y-%m-%d %H:%M") if meta.get("created_at") else "just now"
st.caption(f"{'Read from the store' if res.from_store else 'Computed now'} · stored {created} UTC · compute time "
           f"{fmt(meta.get('compute_seconds'), 3)} s · {meta.get('n_layers')} layers × {meta.get('n_heads')} heads · "
           f"{meta.get('rows', meta.get('n_pairs'))} rows")

b = res.baselines
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Clean logit diff", fmt(b.get("clean_logit_diff"), 4), help="Right-answer logit minus wrong-answer logit, averaged over the clean prompts.")
c2.metric("Corrupt logit diff", fmt(b.get("corrupt_logit_diff"), 4), help="The same on the corrupted prompts.")
c3.metric("Clean P(answer)", fmt(b.get("clean_prob"), 4), help="Probability of the right answer on the clean prompts.")
c4.metric("Corrupt P(answer)", fmt(b.get("corrupt_prob"), 4), help="Probability of the right answer on the corrupted prompts.")
c5.metric("Corrupt KL", fmt(b.get("corrupt_kl"), 4), help="How far the corrupted prediction is from the clean one (KL divergence).")
st.caption(" ".join(baseline_sentences(b, spec)))
for w in meta.get("warnings") or []:
    st.warning(f"Note: {w}.")

t, th = with_detection(res.table, metric)
pos_order = list(dict.fromkeys(t.sort_values("pos")["pos_label"])) if t["pos"].notna().any() else None
title = f"{charts.METRIC_TITLES.get(metric, metric)} · {spec.direction} · {spec.corruption}"
shown: list[tuple[str, object]] = []  # (name, chart) for downloads

if spec.component == "head":
    ch = charts.heatmap(t, "head", "layer", metric=metric, title=f"Heads: {title}", x_title="head", y_title="layer")
    shown.append(("heads", ch))
elif spec.component == "head_by_pos":
    best = t.loc[t["value"].abs().idxmax()] if t["value"].notna().any() else t.iloc[0]
    cc1, cc2 = st.columns(2)
    pos_opts = pos_order or []
    pos_choice = cc1.selectbox("Position for the layer × head map", pos_opts, index=pos_opts.index(best["pos_label"]) if best["pos_label"] in pos_opts else 0,
                               key="pb_v_pos", help="Head-by-position results have three axes; pick the position to show.")
    heads = sorted(int(h) for h in t["head"].dropna().unique())
    head_choice = cc2.selectbox("Head for the layer × position map", heads, index=heads.index(int(best["head"])), key="pb_v_head")
    ch1 = charts.heatmap(t[t["pos_label"] == pos_choice], "head", "layer", metric=metric, title=f"Heads at {pos_choice.strip()}: {title}",
                         x_title="head", y_title="layer")
    ch2 = charts.heatmap(t[t["head"] == head_choice], "pos_label", "layer", metric=metric, title=f"Head {head_choice} by position: {title}",
                         x_title="position (token)", y_title="layer", x_sort=pos_order)
    shown += [("heads_at_position", ch1), ("head_by_position", ch2)]
else:
    wtxt = f" (window {spec.window})" if spec.window > 1 else ""
    ch = charts.heatmap(t, "pos_label", "layer", metric=metric, title=f"{spec.component}{wtxt}: {title}",
                        x_title="position (token)", y_title="layer", x_sort=pos_order)
    shown.append(("layer_by_position", ch))
    if spec.window > 1:
        kp = [p for p in (meta.get("key_positions") or []) if p in set(t["pos"].dropna().astype(int))]
        by_pos = t.groupby("pos")["value"].apply(lambda v: v.abs().max())
        default_pos = kp[-1] if kp else int(by_pos.idxmax())
        labels = {int(p): l for p, l in zip(t["pos"], t["pos_label"])}
        pos_choice = st.selectbox("Position for the window line chart", sorted(labels), index=sorted(labels).index(default_pos),
                                  format_func=lambda p: labels[p].strip(), key="pb_v_wpos")
        lc = charts.window_lines(res.table, metric, pos_choice, labels[pos_choice].strip(),
                                 title=f"Window of {spec.window} layers vs the summation baseline at {labels[pos_choice].strip()}")
        shown.append(("window_lines", lc))

for name, ch in shown:
    st.altair_chart(ch, width="content")
    d1, d2, _ = st.columns([1, 1, 6])
    d1.download_button("PNG", data=lambda ch=ch: charts.to_bytes(ch, "png"), file_name=f"patchboard_{name}.png", mime="image/png",
                       key=f"pb_png_{name}", on_click="ignore", icon=":material/image:")
    d2.download_button("SVG", data=lambda ch=ch: charts.to_bytes(ch, "svg"), file_name=f"patchboard_{name}.svg", mime="image/svg+xml",
                       key=f"pb_svg_{name}", on_click="ignore", icon=":material/polyline:")

# ---------------------------------------------------------------- detection + top table
n_pos = int((t["detected"] == "positive").sum())
n_neg = int((t["detected"] == "negative").sum())
if th.get("sd", 0) and th.get("sd") == th.get("sd"):
    st.markdown(
        f"**2-SD rule** (Zhang & Nanda): a component is *detected* when its effect is more than 2 standard deviations from the "
        f"mean over all {len(t)} components (outside [{fmt(th['lower'])}, {fmt(th['upper'])}]). "
        f"Detected: **{n_pos} positive** (solid black outline) and **{n_neg} negative** (dashed magenta outline: "
        f"the component works *against* the answer)."
    )
else:
    st.markdown("**2-SD rule**: every component has (almost) the same effect here, so nothing is detected.")

st.markdown("**Top components** (largest effect, either sign)")
top = top_components(t, 15).rename(columns={"value": metric, "pos_label": "token"})
st.dataframe(top, hide_index=True, width="stretch",
             column_config={metric: st.column_config.NumberColumn(format="%.5f"), "z": st.column_config.NumberColumn(format="%.2f")})

# ---------------------------------------------------------------- downloads + CLI
st.markdown("**Download the numbers**")
export = res.export_table(metric)
payload = {"spec": spec.to_dict(), "cli": spec.to_cli(), "baselines": res.baselines, "meta": meta,
           "table": json.loads(export.to_json(orient="records", double_precision=15))}
e1, e2, e3, _ = st.columns([1, 1, 1, 5])
e1.download_button("CSV", data=lambda: export.to_csv(index=False), file_name="patchboard_result.csv", mime="text/csv",
                   key="pb_csv", on_click="ignore", icon=":material/table_view:")
e2.download_button("JSON", data=lambda: json.dumps(payload, indent=1, default=str), file_name="patchboard_result.json",
                   mime="application/json", key="pb_json", on_click="ignore", icon=":material/data_object:")
if spec.pairs is not None:
    e3.download_button("pairs.jsonl", data=pairs_to_text(spec.pairs) + "\n", file_name="pairs.jsonl", mime="application/jsonl",
                       key="pb_pairs_dl", on_click="ignore", help="The custom pairs, for the command line below.")

st.markdown("**Reproduce these numbers from the command line**")
ui.copy_box(spec.to_cli(), "Copy command", "command line", rows=3)
