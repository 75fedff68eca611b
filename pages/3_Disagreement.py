"""Disagreement: the same model, prompts and components under every patching
setting (corruption x metric x direction, and for IOI which names are
corrupted), and where the settings disagree about which components matter.

Thin: widgets and layout; every number comes from ``patching.compare`` reading
the store, the same rows ``python -m patching compare`` reads.
"""

from __future__ import annotations

import time
from dataclasses import replace

import altair as alt
import pandas as pd
import streamlit as st

from patching.studies import agreement as A
from patching.studies import disagreement as C
from patching.studies import disagreement_text as CT
from patching.core.errors import PatchboardError
from patching.core.spec import FIELDS, IOI_CORRUPT, MAX_NOISE_SAMPLES, Spec
from ui.plain import md_plain
from ui import extras
from ui import panel, runtime, url
from ui import html as ui_html
from ui import timing

K_MAX = 50
GRID_METHODS = {"exact": "nothing (exact only)", "atp": "atp (attribution patching)", "atp_star": "atp_star (AtP*)",
                "ig": "ig (integrated gradients, 5 steps)"}
TOP_MAX = 30
STAT_TITLES = {
    "spearman": "Spearman ρ",
    "kendall": "Kendall τ",
    "topk_jaccard": "Top-k Jaccard",
    "sign_flips": "Sign flips",
}


ui_html.page_setup("Disagreement")
st.title("Where the settings disagree")
st.caption(
    "Activation patching has choices that should not matter but do (Zhang & Nanda, 2023): how the prompt is broken "
    "(**str** swaps words, **gn** adds Gaussian noise), how the effect is scored (**logit_diff**, **prob**, **kl**), and "
    "which way the patch goes (**denoise**: a clean piece into the broken run; **noise**: a broken piece into the clean run). "
    "This page runs the same components under every combination and shows where the answers to *which components matter* differ."
)

# ---------------------------------------------------------------- settings
spec = panel.spec_sidebar(fields=("model", "task", "n_pairs", "seed", "pairs", "component", "window", "dtype"))
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the comparison appears once it is valid.")
    st.stop()

gn_default = spec if spec.corruption == "gn" else Spec()
with st.sidebar:
    st.markdown("**Gaussian noise (the gn settings)**")
    noise_scale = st.number_input("Noise scale (× embedding std)", min_value=0.1, max_value=100.0, step=0.5,
                                  key=url.url_widget("noise-scale", float(gn_default.noise_scale), extras.float_in("noise-scale", 0.0, 100.0)))
    st.caption(FIELDS["noise_scale"].explain)
    noise_samples = st.number_input("Noise samples", min_value=1, max_value=MAX_NOISE_SAMPLES, step=1,
                                    key=url.url_widget("noise-samples", int(gn_default.noise_samples), extras.int_in("noise-samples", 1, MAX_NOISE_SAMPLES)))
    st.caption(FIELDS["noise_samples"].explain)

is_ioi = spec.pairs is None and spec.task == "ioi"
c1, c2, c3 = st.columns([2, 1, 1])
with c1:
    variants_key = url.url_widget("variants", list(IOI_CORRUPT), extras.subset("variants", IOI_CORRUPT))
    if is_ioi:
        variants = st.multiselect("IOI: which names the corruption replaces", IOI_CORRUPT, key=variants_key,
                                  format_func=FIELDS["ioi_corrupt"].options.get,
                                  help="Each choice adds 4 sweeps (str/gn × denoise/noise) and 12 settings.")
    else:
        variants = list(st.session_state.get(variants_key) or IOI_CORRUPT)
with c2:
    k = st.slider("Top-k for the overlap", 1, K_MAX, key=url.url_widget("k", 10, extras.int_in("k", 1, K_MAX)),
                  help="The top-k Jaccard compares the k components with the largest |effect| under each setting.")

with c3:
    grid_method = st.selectbox("Also estimate with", list(GRID_METHODS), format_func=GRID_METHODS.get,
                               key=url.url_widget("grid-method", "exact", extras.choice("grid-method", list(GRID_METHODS))),
                               help="Adds, beside every setting, the same setting estimated by attribution patching (setting@atp): "
                                    "one forward and one backward pass per sweep. Then 'how much does the approximation change the "
                                    "conclusion' reads like any other setting.")

extra: dict = {"noise-scale": float(noise_scale), "noise-samples": int(noise_samples), "variants": ",".join(variants), "k": int(k)}
if grid_method != "exact":
    extra["grid-method"] = grid_method

try:
    base = C.grid_base(replace(spec, corruption="gn", noise_scale=float(noise_scale), noise_samples=int(noise_samples)))
    if is_ioi and not variants:
        raise PatchboardError("variants", "pick at least one IOI corruption")
    settings = C.with_method(C.default_settings(base, variants if is_ioi else None), grid_method)
    C.grid_specs(base, settings)  # e.g. a component attribution does not estimate
except PatchboardError as e:
    url.write_url(spec, extra)
    ui_html.show_error(e)
    st.stop()

# ---------------------------------------------------------------- what is stored
fp = runtime.fingerprint_for(base.model, base.dtype)
grid = C.lookup_grid(base, runtime.store(), fp, settings) if fp else C.Grid(base=base, settings=settings, specs=C.grid_specs(base, settings))
n_sweeps, n_missing = grid.n_sweeps, grid.n_missing_sweeps
timing.mark("store read")

if n_missing:
    done = n_sweeps - n_missing
    st.info(
        f"**{done} of {n_sweeps} sweeps are stored** ({len(grid.available)} of {len(settings)} settings; one sweep gives "
        f"all three metrics). Computing the missing {n_missing} runs the model once per component per sweep "
        f"({'gn sweeps cost ' + str(int(noise_samples)) + '× a str sweep; ' if any(grid.specs[s].corruption == 'gn' for s in grid.missing) else ''}"
        "stored sweeps are never recomputed).",
        icon=":material/hourglass_empty:",
    )
    if st.button(f"Compute the {n_missing} missing sweep{'s' if n_missing != 1 else ''}", type="primary"):
        bar = st.progress(0.0, text="Loading the model…")
        label = {"text": "Computing"}
        t0 = time.time()

        def status(text: str) -> None:
            label["text"] = text

        def progress(d: int, total: int) -> None:
            frac = d / total if total else 1.0
            el = time.time() - t0
            eta = f", about {el / frac - el:.0f} s left" if 0 < frac < 1 and el > 2 else ""
            bar.progress(min(1.0, frac), text=f"{label['text']} — {frac:.0%} of the grid{eta}")

        try:
            ex = runtime.executor()  # PATCHBOARD_RAY_ADDRESS: the sweeps run on the cluster
            lm = runtime.cached_model(base.model, base.dtype) if ex is None else None
            grid = C.load_or_compute_grid(base, runtime.store(), lm, progress, settings, status=status, executor=ex)
            st.session_state["pb_compare_done"] = f"{grid.computed} sweep(s) computed in {grid.seconds:.0f} s and stored."
            st.rerun()  # redraw from the store, without the button
        except PatchboardError as e:
            ui_html.show_error(e)
if st.session_state.get("pb_compare_done"):
    st.success(st.session_state.pop("pb_compare_done"), icon=":material/check:")

available = grid.available

# Scatter settings: page params a, b (defaults: the paper's LD vs prob contrast).
def _default(setting: str, fallback: int) -> str:
    return setting if setting in available else (available[fallback] if len(available) > fallback else "")

suffix = f"/{variants[0]}" if is_ioi and variants else ""
a_key = url.url_widget("a", _default(f"str/logit_diff/denoise{suffix}", 0), extras.text("a"))
# With an estimate beside exact, B defaults to A's estimate: the approximation's own scatter.
b_default = f"str/logit_diff/denoise{suffix}@{grid_method}" if grid_method != "exact" else f"str/prob/denoise{suffix}"
b_key = url.url_widget("b", _default(b_default, 1), extras.text("b"))
top_key = url.url_widget("top", 10, extras.int_in("top", 1, TOP_MAX))
units_key = url.url_widget("units", "raw", extras.choice("units", ("raw", "z")))
for key, fb in ((a_key, 0), (b_key, 1)):
    if available and st.session_state.get(key) not in available:
        st.session_state[key] = available[min(fb, len(available) - 1)]
extra.update(a=st.session_state.get(a_key) or None, b=st.session_state.get(b_key) or None,
             top=int(st.session_state[top_key]), units=st.session_state[units_key])

url.write_url(spec, extra)
st.markdown(f"#### {md_plain(base.model)} · {base.task or 'custom pairs'} · n={base.n_pairs} · {base.component}"
            + (f" · window {base.window}" if base.window > 1 else "") + f" · {len(settings)} settings")
url.copy_link(spec, extra)
with st.expander("The same table from the command line"):
    st.code(CT.cli_command(base, settings, k), language="bash")
    st.caption("It reads the same store: stored sweeps are not recomputed, and its CSV holds the numbers of the matrices below.")

if len(available) < 2:
    st.info("Nothing to compare yet: at least two settings must be stored. Press the button above to compute the grid.")
    st.stop()

# ---------------------------------------------------------------- tables
eff, long, detections, flips, summary = runtime.grid_tables(grid, k)
rob = runtime.robust(grid, k)
if rob is not None:
    ra, robust_dis, robust_lines = rob
    long = long.merge(ra.drop(columns=["n_noop"]), on=["setting_a", "setting_b"], how="left")
    summary = summary + robust_lines
if grid.missing:
    st.warning(f"Showing the {len(available)} stored settings; {len(grid.missing)} are not computed yet.")

# ---------------------------------------------------------------- findings + mechanisms
st.subheader("What the numbers say")
left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown("\n".join(f"- {line}" for line in summary))
with right:
    st.markdown("**Known mechanisms behind disagreements**")
    for m in CT.mechanisms(grid):
        with st.expander(m["title"], expanded=True):
            st.markdown(m["text"])

# ---------------------------------------------------------------- matrices
st.subheader("Rank agreement between every pair of settings")
st.caption(
    "Each cell compares the component effects under two settings. **Spearman ρ / Kendall τ**: do they rank the components "
    f"the same way (1 = same order, 0 = unrelated, −1 = reversed)? **Top-{k} Jaccard**: overlap of the {k} components with "
    "the largest |effect| (1 = the same set). **Sign flips**: components that help under one setting and hurt under the other."
)
order = [s for s in settings if s in available]
small = len(order) <= 12
tabs = st.tabs([STAT_TITLES[s] if s != "topk_jaccard" else f"Top-{k} Jaccard" for s in STAT_TITLES])
for tab, stat in zip(tabs, STAT_TITLES):
    with tab:
        m = A.matrix_long(long, stat, order)
        if stat in ("spearman", "kendall"):
            scale = alt.Scale(scheme="redblue", domain=[-1, 1])
        elif stat == "topk_jaccard":
            scale = alt.Scale(scheme="blues", domain=[0, 1])
        else:
            scale = alt.Scale(scheme="oranges", domainMin=0)
        side = max(320, min(900, 26 * len(order) + 180))
        base_chart = alt.Chart(m).encode(
            x=alt.X("setting_b:N", sort=order, title=None, axis=alt.Axis(labelAngle=-50, labelLimit=220, labelOverlap=False)),
            y=alt.Y("setting_a:N", sort=order, title=None, axis=alt.Axis(labelLimit=220, labelOverlap=False)),
        )
        tips = [alt.Tooltip("setting_a:N", title="setting A"), alt.Tooltip("setting_b:N", title="setting B"),
                alt.Tooltip("value:Q", title=STAT_TITLES[stat], format=".3f" if stat != "sign_flips" else "d")]
        if rob is not None and stat in ("spearman", "topk_jaccard"):
            extra = [f"{stat}_lo", f"{stat}_hi"] + (["floor_a", "floor_b"] if stat == "spearman" else [])
            both = pd.concat([long[["setting_a", "setting_b"] + extra],
                              long[["setting_b", "setting_a"] + extra].rename(columns={"setting_a": "setting_b", "setting_b": "setting_a",
                                                                                        "floor_a": "floor_b", "floor_b": "floor_a"})])
            m = m.merge(both, on=["setting_a", "setting_b"], how="left")
            base_chart = alt.Chart(m).encode(x=base_chart.encoding.x, y=base_chart.encoding.y)
            tips += [alt.Tooltip(f"{stat}_lo:Q", title="95% interval from", format=".3f"), alt.Tooltip(f"{stat}_hi:Q", title="95% interval to", format=".3f")]
            if stat == "spearman":
                tips += [alt.Tooltip("floor_a:Q", title="A with itself (split halves)", format=".3f"),
                         alt.Tooltip("floor_b:Q", title="B with itself (split halves)", format=".3f")]
        rect = base_chart.mark_rect().encode(color=alt.Color("value:Q", scale=scale, title=STAT_TITLES[stat]), tooltip=tips)
        chart = rect
        if small:
            text = base_chart.mark_text(fontSize=10).encode(
                text=alt.Text("value:Q", format=".2f" if stat != "sign_flips" else "d"),
                color=alt.value("#222"),
            )
            chart = rect + text
        st.altair_chart(chart.properties(width=side, height=side), width="content")
        timing.mark("chart sent")
st.download_button("Download the agreement table (CSV, as the CLI writes it)", long.to_csv(index=False).encode(),
                   file_name="compare.csv", mime="text/csv")
runtime.bundle_button(list(dict.fromkeys(r.key for r in grid.results.values())), f"the {len(grid.available)} settings' sweeps")
with st.expander("The agreement table"):
    st.dataframe(long, hide_index=True)

# ---------------------------------------------------------------- robustness
st.subheader("Do the disagreements survive another draw of prompts?")
if rob is None:
    st.info("Some of these sweeps have no per-prompt values (attribution estimates, or sweeps an older version stored), "
            "so no intervals can be drawn.")
else:
    st.caption("The prompts are resampled with replacement (1,000 times, seeded, the same draw for every setting). A disagreement "
               "is **robust** when it holds in at least 95 % of the resamples; the others may be sampling noise. The agreement "
               "matrices' tooltips show each statistic's 95 % interval, and for Spearman each setting's agreement with itself "
               "across two halves of the prompts (its noise floor): two settings that agree less than that disagree beyond chance.")
    shown_dis = robust_dis.rename(columns={"setting_a": "detected / positive under", "setting_b": "missed / negative under",
                                           "frequency": "holds in"})
    shown_dis["holds in"] = (shown_dis["holds in"] * 100).round(1)
    st.dataframe(shown_dis, hide_index=True, column_config={"holds in": st.column_config.NumberColumn(format="%.1f%%")})

# ---------------------------------------------------------------- detection
st.subheader("Which components each setting detects (2-SD rule)")
st.caption("A component is detected when its effect is more than 2 standard deviations from the mean effect of its sweep "
           "(Zhang & Nanda). Negative = it works against the answer (e.g. negative name-mover heads).")
st.dataframe(A.detection_sets(eff), hide_index=True)

st.subheader("Detected under some settings, missed under others")
if len(detections):
    st.caption("Each component's effect under every setting; **missed_in** lists the settings where it stays inside the 2-SD band.")
    st.dataframe(detections, hide_index=True)
else:
    st.success("Every setting detects the same components.")

st.subheader("Sign flips")
if len(flips):
    det_flips = flips[flips["detected_in"].astype(str) != ""]
    st.caption(f"{len(flips)} components are positive under one setting and negative under another; {len(det_flips)} of them are "
               "detected somewhere (the rest are small effects around zero). **flip_strength** is the weaker side in SD units.")
    st.dataframe(det_flips if len(det_flips) else flips, hide_index=True)
else:
    st.success("No component changes sign between settings.")

# ---------------------------------------------------------------- A vs B
st.subheader("Setting A against setting B")
ca, cb, cu = st.columns([2, 2, 1])
with ca:
    a = st.selectbox("Setting A (x axis)", available, key=a_key)
with cb:
    b = st.selectbox("Setting B (y axis)", available, key=b_key)
with cu:
    units = st.radio("Units", ("raw", "z"), key=units_key, horizontal=True,
                     format_func={"raw": "effect", "z": "SDs (z)"}.get,
                     help="Metrics have different scales; z-scores put both axes in SDs of their own sweep.")
sc = A.scatter_data(eff, a, b)
xcol, ycol = ("a", "b") if units == "raw" else ("z_a", "z_b")
lo = float(min(sc[xcol].min(), sc[ycol].min()))
hi = float(max(sc[xcol].max(), sc[ycol].max()))
pad = 0.05 * (hi - lo or 1.0)
ident = pd.DataFrame({"x": [lo - pad, hi + pad], "y": [lo - pad, hi + pad]})
colors = alt.Scale(domain=["both", "A only", "B only", "neither"], range=["#6a3d9a", "#1f78b4", "#e6550d", "#c7c7c7"])
dom = [lo - pad, hi + pad]
pts = alt.Chart(sc).mark_circle(size=55, opacity=0.85).encode(
    x=alt.X(f"{xcol}:Q", title=f"A: {a}" + (" (z)" if units == "z" else ""), scale=alt.Scale(domain=[dom[0], dom[1] + 2 * pad], nice=False)),
    y=alt.Y(f"{ycol}:Q", title=f"B: {b}" + (" (z)" if units == "z" else ""), scale=alt.Scale(domain=dom, nice=False)),
    color=alt.Color("detected:N", scale=colors, title="detected (2 SD)"),
    tooltip=["component", alt.Tooltip("a:Q", format=".4g", title="A"), alt.Tooltip("b:Q", format=".4g", title="B"),
             alt.Tooltip("z_a:Q", format=".2f"), alt.Tooltip("z_b:Q", format=".2f"), "detected", "sign_flip"],
)
labels = alt.Chart(sc[sc["detected"] != "neither"]).mark_text(align="left", dx=6, dy=-4, fontSize=11).encode(
    x=f"{xcol}:Q", y=f"{ycol}:Q", text="component")
line = alt.Chart(ident).mark_line(strokeDash=[5, 4], color="#888").encode(x="x:Q", y="y:Q")
st.altair_chart((line + pts + labels).properties(width=620, height=460).interactive(), width="content")
r = long[((long.setting_a == a) & (long.setting_b == b)) | ((long.setting_a == b) & (long.setting_b == a))]
if len(r):
    row = r.iloc[0]
    st.caption(f"Dashed: the identity line. Spearman ρ = {row['spearman']:.3f}, Kendall τ = {row['kendall']:.3f}, "
               f"top-{k} Jaccard = {row['topk_jaccard']:.3f}, {int(row['sign_flips'])} sign flips. Labelled points are detected "
               "under A or B." + (" Raw effects of different metrics have different units; switch to z to compare shapes." if units == "raw" else ""))

# ---------------------------------------------------------------- rank chart
st.subheader("The top components across settings")
top = st.slider("How many components (the top of setting A)", 1, TOP_MAX, key=top_key)
rk = A.rank_data(eff, int(top), reference=a)
cap = 2 * int(top) + 1
rk["shown_rank"] = rk["rank"].clip(upper=cap)
bump = alt.Chart(rk).encode(
    x=alt.X("setting:N", sort=order, title=None, axis=alt.Axis(labelAngle=-50, labelLimit=220, labelOverlap=False)),
    y=alt.Y("shown_rank:Q", scale=alt.Scale(reverse=True, domain=[1, cap]), title=f"rank by |effect| (bottom = {cap} or lower)"),
    color=alt.Color("component:N", sort=list(dict.fromkeys(rk["component"])), title=f"top {top} under A"),
    tooltip=["component", "setting", "rank", alt.Tooltip("effect:Q", format=".4g"), alt.Tooltip("z:Q", format=".2f")],
)
st.altair_chart((bump.mark_line(opacity=0.6) + bump.mark_point(filled=True, size=50)).properties(
    width=alt.Step(max(22, min(56, 900 // max(1, len(order))))), height=380), width="content")
st.caption(f"Each line follows one of the {top} components with the largest |effect| under A ({md_plain(a)}); a flat line near the top "
           "means every setting agrees it matters.")

# ---------------------------------------------------------------- export
st.subheader("Export")
st.download_button("Download every effect (component × setting, CSV)", A.effects_table(eff).to_csv(index=False).encode(),
                   file_name="effects.csv", mime="text/csv")
st.caption("Every statistic on this page can be recomputed from this file (scipy's spearmanr / kendalltau, the 2-SD rule).")
timing.mark("end")
