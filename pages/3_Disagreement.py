"""Disagreement: the same model, prompts and components under every patching
setting (corruption x metric x direction, and for IOI which names are
corrupted), and where the settings disagree about which components matter.

Thin: widgets and layout; every number comes from
``patching.studies.disagreement`` reading the store (its report computed
once per grid), the same rows ``python -m patching compare`` reads.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from patching.core.errors import PatchboardError
from patching.core.spec import FIELDS, IOI_CORRUPT, MAX_NOISE_SAMPLES, Spec
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import text as disagreement_text
from ui.charts import STAT_TITLES, agreement_matrix, rank_bump, settings_scatter
from ui.plain import md_plain
from ui import access, extras, panel, runtime, timing, url
from ui import html as ui_html

K_MAX = 50
TOP_MAX = 30


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

is_ioi = disagreement_grid.has_variants(spec)
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
    grid_method = st.selectbox("Also estimate with", list(disagreement_grid.GRID_METHODS), format_func=disagreement_grid.GRID_METHODS.get,
                               key=url.url_widget("grid-method", "exact", extras.choice("grid-method", list(disagreement_grid.GRID_METHODS))),
                               help="Adds, beside every setting, the same setting estimated by attribution patching (setting@atp): "
                                    "one forward and one backward pass per sweep. Then 'how much does the approximation change the "
                                    "conclusion' reads like any other setting.")

extra: dict = {"noise-scale": float(noise_scale), "noise-samples": int(noise_samples), "variants": ",".join(variants), "k": int(k)}
if grid_method != "exact":
    extra["grid-method"] = grid_method

try:
    base = disagreement_grid.grid_base(replace(spec, corruption="gn", noise_scale=float(noise_scale), noise_samples=int(noise_samples)))
    settings = disagreement_grid.page_settings(base, variants, grid_method)
except PatchboardError as e:
    url.write_url(spec, extra)
    ui_html.show_error(e)
    st.stop()

# ---------------------------------------------------------------- what is stored
fp = runtime.fingerprint_for(base.model, base.dtype)
grid = (disagreement_grid.lookup_grid(base, runtime.store(), fp, settings) if fp
        else disagreement_grid.Grid(base=base, settings=settings, specs=disagreement_grid.grid_specs(base, settings)))
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
    if access.read_only():
        access.read_only_note("Computing the missing sweeps")
    elif st.button(f"Compute the {n_missing} missing sweep{'s' if n_missing != 1 else ''}", type="primary"):
        computed = runtime.run_grid(base, settings)
        if computed is not None:
            st.session_state["pb_compare_done"] = f"{computed.computed} sweep(s) computed in {computed.seconds:.0f} s and stored."
            st.rerun()  # redraw from the store, without the button
if st.session_state.get("pb_compare_done"):
    st.success(st.session_state.pop("pb_compare_done"), icon=":material/check:")

available = grid.available

# Scatter settings: page params a, b (defaults: the paper's LD vs prob contrast, or A against its estimate).
a_default, b_default = disagreement_grid.default_contrast(available, variants[0] if is_ioi and variants else None, grid_method)
a_key = url.url_widget("a", a_default, extras.text("a"))
b_key = url.url_widget("b", b_default, extras.text("b"))
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
n_imported = sum(1 for r in dict((r.key, r) for r in grid.results.values()).values() if r.imported)
if n_imported:
    st.caption(f":orange-badge[:material/move_to_inbox: imported] {n_imported} of the {len({r.key for r in grid.results.values()})} "
               "sweeps behind this page were imported from bundles, not computed on this server (the Library says from where).")
with st.expander("The same table from the command line"):
    st.code(disagreement_text.cli_command(base, settings, k), language="bash")
    st.caption("It reads the same store: stored sweeps are not recomputed, and its CSV holds the numbers of the matrices below.")

if len(available) < 2:
    st.info("Nothing to compare yet: at least two settings must be stored. Press the button above to compute the grid.")
    st.stop()

# ---------------------------------------------------------------- tables
report = runtime.grid_report(grid, k)
if grid.missing:
    st.warning(f"Showing the {len(available)} stored settings; {len(grid.missing)} are not computed yet.")

# ---------------------------------------------------------------- findings + mechanisms
st.subheader("What the numbers say")
left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown("\n".join(f"- {line}" for line in report.summary))
with right:
    st.markdown("**Known mechanisms behind disagreements**")
    for m in disagreement_text.mechanisms(grid):
        with st.expander(m["title"], expanded=True):
            st.markdown(m["text"])

# ---------------------------------------------------------------- matrices
st.subheader("Rank agreement between every pair of settings")
st.caption(
    "Each cell compares the component effects under two settings. **Spearman ρ / Kendall τ**: do they rank the components "
    f"the same way (1 = same order, 0 = unrelated, −1 = reversed)? **Top-{k} Jaccard**: overlap of the {k} components with "
    "the largest |effect| (1 = the same set). **Sign flips**: components that help under one setting and hurt under the other."
)
order = report.settings
tabs = st.tabs([STAT_TITLES[s] if s != "topk_jaccard" else f"Top-{k} Jaccard" for s in STAT_TITLES])
for tab, stat in zip(tabs, STAT_TITLES):
    with tab:
        st.altair_chart(agreement_matrix(report.matrix(stat), stat, order), width="content")
        timing.mark("chart sent")
st.download_button("Download the agreement table (CSV, as the CLI writes it)", report.agreement.to_csv(index=False).encode(),
                   file_name="compare.csv", mime="text/csv")
runtime.bundle_button(list(dict.fromkeys(r.key for r in grid.results.values())), f"the {len(grid.available)} settings' sweeps")
with st.expander("The agreement table"):
    st.dataframe(report.agreement, hide_index=True)

# ---------------------------------------------------------------- robustness
st.subheader("Are the disagreements more than sampling noise?")
if report.robustness is None:
    st.info("Some of these sweeps have no per-prompt values (attribution estimates, or sweeps an older version stored), "
            "so no intervals can be drawn.")
else:
    rob = report.robustness
    sizes = rob.family_sizes()
    st.caption(f"Each disagreement is a paired sign-flip test over the {rob.n_prompts} prompts the settings share; Benjamini–Hochberg "
               f"q-values control the false discovery rate across each family ({sizes['detected/missed']} detected/missed tests, "
               f"{sizes['sign flip']} sign-flip tests). The agreement matrices' tooltips show each statistic's 95 % interval "
               "(expanded percentile bootstrap, 1,000 resamples), and for Spearman each setting's noise floor: its agreement with itself "
               "over 50 random halves of the prompts, against the two settings' agreement on the same halves.")
    if rob.coverage_note:
        st.warning(rob.coverage_note)
    st.dataframe(report.robust_disagreements(), hide_index=True)

# ---------------------------------------------------------------- detection
st.subheader("Which components each setting detects (2-SD rule)")
st.caption("A component is detected when its effect is more than 2 standard deviations from the mean effect of its sweep "
           "(Zhang & Nanda). Negative = its patch moves the answer the other way (e.g. negative name-mover heads); under a "
           "noising KL it only says the prediction moved further from the corrupted run, which damage off the data's "
           "manifold also does.")
st.dataframe(report.detection_sets, hide_index=True)

st.subheader("Detected under some settings, missed under others")
if len(report.disagreements):
    st.caption("Each component's effect under every setting; **missed_in** lists the settings where it stays inside the 2-SD band.")
    st.dataframe(report.disagreements, hide_index=True)
else:
    st.success("Every setting detects the same components.")

st.subheader("Sign flips")
flips = report.sign_flips
if len(flips):
    det_flips = report.detected_sign_flips()
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
st.altair_chart(settings_scatter(report.scatter(a, b), a, b, units), width="content")
row = report.pair(a, b)
if row is not None:
    st.caption(f"Dashed: the identity line. Spearman ρ = {row['spearman']:.3f}, Kendall τ = {row['kendall']:.3f}, "
               f"top-{k} Jaccard = {row['topk_jaccard']:.3f}, {int(row['sign_flips'])} sign flips. Labelled points are detected "
               "under A or B." + (" Raw effects of different metrics have different units; switch to z to compare shapes." if units == "raw" else ""))

# ---------------------------------------------------------------- rank chart
st.subheader("The top components across settings")
top = st.slider("How many components (the top of setting A)", 1, TOP_MAX, key=top_key)
st.altair_chart(rank_bump(report.ranks(a, int(top)), order, int(top)), width="content")
st.caption(f"Each line follows one of the {top} components with the largest |effect| under A ({md_plain(a)}); a flat line near the top "
           "means every setting agrees it matters.")

# ---------------------------------------------------------------- export
st.subheader("Export")
st.download_button("Download every effect (component × setting, CSV)", report.effects_table().to_csv(index=False).encode(),
                   file_name="effects.csv", mime="text/csv")
st.caption("Every statistic on this page can be recomputed from this file (scipy's spearmanr / kendalltau, the 2-SD rule).")
timing.mark("end")
