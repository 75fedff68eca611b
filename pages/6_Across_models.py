"""Across models: the same study (task, prompts, setting, seed) on several
models, compared where their components cannot be matched one to one.

Thin: widgets and layout; every number comes from
``patching.studies.cross_model`` reading the store (the same rows
``python -m patching across-models`` reads); charts from ``ui.charts``.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from patching.core.config import MODELS, can_load, known
from patching.core.errors import PatchboardError
from patching.core.spec import MAX_NOISE_SAMPLES, Spec
from patching.studies import cross_model
from ui.charts import depth_profile, model_intervals, spec_of
from ui.plain import md_plain
from ui import extras, panel, runtime, url
from ui import html as ui_html

ui_html.page_setup("Across models")
st.title("The same study across models")
st.caption(
    "Two models rarely have components that match one to one (SmolLM2: 30 layers × 9 heads; Gemma 3 270M: 18 × 4). "
    "So the same task, prompts and setting are compared where they can be: **where** in depth the effects sit, how much "
    "of them goes through **attention vs the MLPs**, **how many heads** stand out, and **which choice** of the "
    "Disagreement grid (corruption, metric, direction) changes the answer most on each model. Every number has a 95 % "
    "interval from resampling the prompts."
)

spec = panel.spec_sidebar(fields=("task", "n_pairs", "seed", "pairs", "corruption", "metric", "direction", "ioi_corrupt"))
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there).")
    st.stop()
with st.sidebar:
    # The grid's gn settings read these whatever the study's own corruption (as on the Disagreement page).
    st.markdown("**Gaussian noise (the grid's gn settings)**")
    noise_scale = st.number_input("Noise scale (× embedding std)", min_value=0.1, max_value=100.0, step=0.5,
                                  key=url.url_widget("noise-scale", float(Spec().noise_scale), extras.float_in("noise-scale", 0.0, 100.0)))
    noise_samples = st.number_input("Noise samples", min_value=1, max_value=MAX_NOISE_SAMPLES, step=1,
                                    key=url.url_widget("noise-samples", int(Spec().noise_samples), extras.int_in("noise-samples", 1, MAX_NOISE_SAMPLES)))

options = list(MODELS)
models = st.multiselect("Models", options, key=url.url_widget("models", options, extras.subset("models", options)),
                        help="Known models; one not installed here still shows its stored results. "
                             "Add one with python -m patching models add NAME.")
extra = {"models": ",".join(models), "noise-scale": float(noise_scale), "noise-samples": int(noise_samples)}
url.write_url(spec, extra)
try:
    study = cross_model.Study(replace(spec, noise_scale=float(noise_scale), noise_samples=int(noise_samples)), cross_model.parse_models(models))
except PatchboardError as e:
    st.info(md_plain(str(e)))
    st.stop()

cm = cross_model.lookup(study, runtime.store(), runtime.fingerprint_for)
if not cm.complete:
    st.warning("Not stored yet: " + md_plain("; ".join(cm.missing())))
    loadable = [m for m in study.models if can_load(m) or known(m) is None]
    absent = [m for m in study.models if m not in loadable]
    for m in absent:
        st.caption(md_plain(f"{m} is not installed here: python -m patching models add {m}"
                            + (f" --{known(m).accept_flag}" if known(m).accept_flag else "")))
    if not absent and st.button("Compute the missing sweeps", type="primary"):
        bar = runtime.ProgressBar("Computing", waiting="Loading the models…")
        try:
            for m in study.models:
                runtime.cached_model(m)
            cross_model.compute(study, runtime.store(), progress=bar.status)
            st.rerun()
        except PatchboardError as e:
            ui_html.show_error(e)

rep = cross_model.report(cm)
if rep.depth.empty and rep.factors.empty:
    st.info("Nothing to compare yet: compute the study (button above) or import a bundle that holds it (Library).")
    st.stop()

for line in rep.lines:
    st.markdown("- " + md_plain(line))

st.subheader("Where the effects sit: by relative depth")
st.caption("Each layer's strongest position in the attention and MLP output sweeps, at relative depth layer / (layers − 1); "
           "the band is the 95 % interval over prompts.")
if not rep.depth.empty:
    st.altair_chart(depth_profile(rep.depth, spec.metric), width="content")

c1, c2 = st.columns(2)
with c1:
    st.subheader("Attention vs MLP")
    if not rep.share.empty:
        st.vega_lite_chart(spec_of(model_intervals(rep.share, "share", "attention's share of the per-layer effects", fmt=".0%", width=360)),
                           width="content")
with c2:
    st.subheader("Heads detected")
    if not rep.detected.empty:
        d = rep.detected.assign(lo=rep.detected["fraction_lo"], hi=rep.detected["fraction_hi"])
        st.vega_lite_chart(spec_of(model_intervals(d, "fraction", "fraction of heads past the 2-SD rule", fmt=".1%", width=360)),
                           width="content")

st.subheader("Which choice changes the answer most")
st.caption("For each factor, the median Spearman correlation of the head effects between settings that differ in that factor "
           "alone; lower = that choice moves the conclusion more.")
if not rep.factors.empty:
    f = rep.factors.assign(row=rep.factors["model"] + " · " + rep.factors["factor"])
    st.vega_lite_chart(spec_of(model_intervals(f, "spearman", "median Spearman ρ between settings one factor apart", label="row",
                                               color="model")), width="content")

st.download_button("Download every number (CSV, as the CLI writes it)", cross_model.export_table(rep).to_csv(index=False).encode(),
                   file_name="across_models.csv", mime="text/csv")
q = {k: v for k, v in spec.to_query().items() if k not in ("model", "component", "window", "method", "pairs")}
q.update({"noise-scale": f"{float(noise_scale):g}", "noise-samples": int(noise_samples)})
cli = "python -m patching across-models --models " + ",".join(study.models) + "".join(f" --{k} {v}" for k, v in q.items())
st.code(cli, language="bash")
keys = [r.key for p in cm.parts.values() for r in list(p.layers.values()) + (list(p.grid.results.values()) if p.grid else [])]
runtime.bundle_button(list(dict.fromkeys(k for k in keys if k)), "the study's sweeps", name="across_models_bundle.zip")
