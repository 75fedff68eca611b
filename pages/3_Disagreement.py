"""Disagreement: the same model, prompts and components under every patching
setting (corruption x metric x direction, for IOI which names are corrupted,
and optionally the method), and the answer first: which choice changes the
component ranking most, what stays the same, and where the settings differ.

Thin: take the request (the link), get the grid's statistics (stored with its
sweeps, or computed once from them and stored: ``ui.runtime.grid_stats``),
draw. Every number comes from ``patching.studies.disagreement``, the same as
``python -m patching compare --factors F --consensus F --summary`` prints.
The answer is drawn first (it reaches the browser first); the sidebar last.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from patching.core.errors import PatchboardError
from patching.core.spec import FIELDS, IOI_CORRUPT, MAX_NOISE_SAMPLES, Spec
from patching.studies.disagreement import answer, view
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import grid_notebook
from patching.studies.disagreement import text as disagreement_text
from ui.plain import md_plain
from ui import access, answer_chart, extras, panel, runtime, timing, url
from ui import html as ui_html

K_MAX = 50
TOP_MAX = 30
ROWS_MAX = 100
STAT_NAMES = {"spearman": "Spearman ρ", "topk_jaccard": "Top-k overlap", "kendall": "Kendall τ", "sign_flips": "Sign flips"}

ui_html.page_setup("Disagreement")
widgets = panel.spec_panel(fields=("model", "task", "n_pairs", "seed", "pairs", "component", "window", "dtype"))
st.title("Which choice changes the answer?")
st.caption("The same components patched under every setting: how the prompt is broken (**str** swaps a word, **gn** adds noise), "
           "how the effect is scored (**LD** logit difference, **prob**, **KL**), the direction (**den**oise, **noi**se) and, for IOI, "
           "which names are swapped (Zhang & Nanda 2023; Heimersheim & Nanda 2024). New to this? Take the **Guided tour** in the menu.")

# ---------------------------------------------------------------- the request (the link)
spec = widgets.spec
s = st.session_state
gn_default = spec if spec is not None and spec.corruption == "gn" else Spec()
keys = {
    "noise-scale": url.url_widget("noise-scale", float(gn_default.noise_scale), extras.float_in("noise-scale", 0.0, 100.0)),
    "noise-samples": url.url_widget("noise-samples", int(gn_default.noise_samples), extras.int_in("noise-samples", 1, MAX_NOISE_SAMPLES)),
    "variants": url.url_widget("variants", list(IOI_CORRUPT), extras.subset("variants", IOI_CORRUPT)),
    "k": url.url_widget("k", 10, extras.int_in("k", 1, K_MAX)),
    "grid-method": url.url_widget("grid-method", "exact", extras.choice("grid-method", list(disagreement_grid.GRID_METHODS))),
    "a": url.url_widget("a", "", extras.text("a")),
    "b": url.url_widget("b", "", extras.text("b")),
    "top": url.url_widget("top", 10, extras.int_in("top", 1, TOP_MAX)),
    "units": url.url_widget("units", "raw", extras.choice("units", ("raw", "z"))),
    "stat": url.url_widget("stat", "spearman", extras.choice("stat", view.MATRIX_STATS)),
    "rows": url.url_widget("rows", 30, extras.int_in("rows", 5, ROWS_MAX)),
    "focus": url.url_widget("focus", "", extras.text("focus")),
}
k = int(s[keys["k"]])
grid_method = s[keys["grid-method"]]
is_ioi = spec is not None and disagreement_grid.has_variants(spec)
variants = list(s[keys["variants"]] or IOI_CORRUPT)
extra: dict = {"noise-scale": float(s[keys["noise-scale"]]), "noise-samples": int(s[keys["noise-samples"]]), "variants": ",".join(variants), "k": k}
if grid_method != "exact":
    extra["grid-method"] = grid_method


def sidebar() -> None:
    """The settings (drawn last, so the answer reaches the browser first)."""
    widgets.render()
    with st.sidebar:
        st.markdown("**The grid**")
        if is_ioi:
            st.multiselect("IOI: which names the corruption replaces", IOI_CORRUPT, key=keys["variants"], format_func=FIELDS["ioi_corrupt"].options.get,
                           help="Each choice adds 4 sweeps (str/gn × denoise/noise) and 12 settings.")
        st.selectbox("Also estimate with", list(disagreement_grid.GRID_METHODS), format_func=disagreement_grid.GRID_METHODS.get, key=keys["grid-method"],
                     help="Adds, beside every setting, the same setting estimated by attribution patching (setting@atp): then the "
                          "method is one more factor, and 'how much does the approximation change the conclusion' reads like the others.")
        st.slider("Top-k for the overlap", 1, K_MAX, key=keys["k"], help="The top-k overlap compares the k components with the largest |effect|.")
        st.slider("Rows of the consensus matrix", 5, ROWS_MAX, key=keys["rows"], help="How many of the components detected under the most settings it shows.")
        st.markdown("**Gaussian noise (the gn settings)**")
        st.number_input("Noise scale (× embedding std)", min_value=0.1, max_value=100.0, step=0.5, key=keys["noise-scale"])
        st.caption(FIELDS["noise_scale"].explain)
        st.number_input("Noise samples", min_value=1, max_value=MAX_NOISE_SAMPLES, step=1, key=keys["noise-samples"])
        st.caption(FIELDS["noise_samples"].explain)


def finish() -> None:
    url.write_url(spec, extra) if spec is not None else None
    sidebar()
    timing.mark("end")
    st.stop()


if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the comparison appears once it is valid.")
    finish()
try:
    base = disagreement_grid.grid_base(replace(spec, corruption="gn", noise_scale=extra["noise-scale"], noise_samples=extra["noise-samples"]))
    settings = disagreement_grid.page_settings(base, variants, grid_method)
except PatchboardError as e:
    ui_html.show_error(e)
    finish()

# ---------------------------------------------------------------- the result: the grid's statistics
header_box, answer_box, status_box = st.container(), st.container(), st.container()
stats, stored_keys, stats_key = runtime.grid_stats(base, settings, k)
timing.mark("store read")

if stats is not None:
    with answer_box:
        left, right = st.columns([11, 9], gap="medium")
        with left:
            st.vega_lite_chart(answer_chart.factor_bars(stats.factors, stats.factor_pairs(), k), width="content")
            timing.mark("chart sent")
        with right:
            st.markdown("\n".join(f"- {line}" for line in answer.sentences(stats)))

n_stored = len(stored_keys)
missing = [x for x in settings if x not in stored_keys]
with header_box:
    where = (f"{md_plain(base.model)} · {base.task or 'custom pairs'} · n={base.n_pairs} · {base.component}"
             + (f" · window {base.window}" if base.window > 1 else "") + f" · {len(settings)} settings")
    if stats is not None:
        i = stats.info
        where += (f" · {i['n_measured']} measured {answer.unit(stats)}" + (f" ({i['n_noop']} zero by construction, left out)" if i["n_noop"] else "")
                  + (f" · 95 % intervals (expanded percentile bootstrap) over resamples of the {i['n_prompts']} prompts" if stats.has_intervals
                     else " · no per-prompt values: no intervals"))
    st.caption(where)
with status_box:
    if missing:
        specs = disagreement_grid.grid_specs(base, settings)
        n_missing = len(disagreement_grid.sweeps_of({x: specs[x] for x in missing}))
        n_sweeps = len(disagreement_grid.sweeps_of(specs))
        st.info(f"**{n_sweeps - n_missing} of {n_sweeps} sweeps are stored** ({n_stored} of {len(settings)} settings; one sweep gives all three "
                f"metrics). Computing the missing {n_missing} runs the model once per component per sweep (stored sweeps are never recomputed).",
                icon=":material/hourglass_empty:")
        if access.read_only():
            access.read_only_note("Computing the missing sweeps")
        elif st.button(f"Compute the {n_missing} missing sweep{'s' if n_missing != 1 else ''}", type="primary"):
            computed = runtime.run_grid(base, settings)
            if computed is not None:
                s["pb_compare_done"] = f"{computed.computed} sweep(s) computed in {computed.seconds:.0f} s and stored."
                st.rerun()
    if s.get("pb_compare_done"):
        st.success(s.pop("pb_compare_done"), icon=":material/check:")

if stats is None:
    st.info("Nothing to compare yet: at least two settings must be stored. Press the button above to compute the grid.")
    finish()

from ui import grid_charts  # noqa: E402 - Altair (and its import time) only after the answer is sent
from ui.charts import rank_bump, settings_scatter  # noqa: E402

available = stats.settings
lay = view.settings_layout(stats)
with answer_box:
    st.caption(f"Bars: the mean agreement between settings that differ only in that factor (red: the lowest); black lines: 95 % intervals; "
               f"grey ticks: each pair. Over the {stats.info['n_measured']} measured {answer.unit(stats)}. " + (view.rank_note(stats) or ""))

# ---------------------------------------------------------------- what stays the same
st.subheader("What stays the same")
comps = view.components(stats)
rows = int(s[keys["rows"]])
st.caption(f"The {min(rows, len(comps))} {answer.unit(stats)} detected under the most settings (2-SD rule; rows: core first, above the thick line: "
           f"detected under at least 90 % of the settings), each setting a column grouped by factor. Colour: z, the effect in SDs of its sweep; "
           "outlined: detected (solid above the band, dashed below: the patch moves the answer the other way; under a noising KL, only that "
           "the prediction moved further from the corrupted run); dot: significant (detected in ≥ 95 % of resamples, where the prompts are "
           "enough for the intervals to cover); grey: zero by "
           "construction. **Click a row** to see its effects under every setting.")
if len(comps):
    cm = view.consensus_cells(stats, rows)
    ev = st.vega_lite_chart(runtime.chart_spec((stats_key, "consensus", rows), lambda: grid_charts.consensus_matrix(cm, lay)),
                            width="content", on_select="rerun", selection_mode="pick", key="pb_consensus")
    picked = [p.get("component") for p in ((ev.selection or {}).get("pick") or []) if isinstance(p, dict) and p.get("component")]
    if picked and picked[0] != s.get("pb_consensus_last"):
        s[keys["focus"]] = picked[0]
    s["pb_consensus_last"] = picked[0] if picked else None
    options = list(comps["component"])
    if s.get(keys["focus"]) not in options:
        s[keys["focus"]] = options[0]
    focus = st.selectbox("Effects of one component under every setting", options, key=keys["focus"])
    d = view.component_detail(stats, focus)
    st.altair_chart(grid_charts.component_effects(d, focus), width="content")
    st.caption("Each point is the component's effect under one setting, with its 95 % interval over resamples of the prompts; a panel per "
               "metric, as their units differ.")
else:
    st.success("No component is detected under any setting.")

# ---------------------------------------------------------------- every pair of settings
st.subheader("Agreement between every pair of settings")
stat = st.segmented_control("Statistic", list(view.MATRIX_STATS), format_func=lambda x: STAT_NAMES[x].replace("Top-k", f"Top-{k}"), key=keys["stat"])
stat = stat or "spearman"
st.caption("Settings grouped in blocks by factor (headers); inside a block, the metric and direction (the full setting in the tooltip). "
           "Spearman and Kendall: 1 = same order, 0 = unrelated, −1 = reversed; top-k overlap: 1 = the same k components; sign flips: "
           "components positive under one setting and negative under the other.")
st.vega_lite_chart(runtime.chart_spec((stats_key, "matrix", stat), lambda: grid_charts.grouped_matrix(view.matrix(stats, stat), stat, lay, k)),
                   width="content")

# ---------------------------------------------------------------- the tables
st.subheader("The numbers behind it")
counts = view.disagreement_counts(stats)
fdr = float(stats.info.get("fdr", 0.05))
if view.coverage_note(stats):
    st.caption(view.coverage_note(stats))
tables_spec = [
    ("Pairs that differ in one factor (what each bar averages)", view.factor_pairs(stats), "factor_pairs.csv"),
    (f"Components detected under some setting ({len(comps)}), core first", comps, "components.csv"),
    ("Detections per setting", view.detection_sets(stats), "detections.csv"),
    (f"“Detected here, missed there”: {counts['detected/missed'][0]} of {counts['detected/missed'][1]} significant at FDR "
     f"{fdr:g} (paired tests over the prompts; a family of {counts['detected/missed'][2]:,})", view.disagreements(stats, "detected/missed"),
     "disagreements.csv"),
    (f"Sign flips: {counts['sign flip'][0]} of {counts['sign flip'][1]} significant at FDR {fdr:g} (both signs beyond 1 SD; a family "
     f"of {counts['sign flip'][2]:,})", view.disagreements(stats, "sign flip"), "sign_flips.csv"),
    ("The agreement table (as the CLI writes it)", stats.agreement, "compare.csv"),
    ("Every component × setting: effect, interval, z, detection, stability", view.cells_table(stats), "cells.csv"),
    ("Every effect, a column per setting (every statistic above can be recomputed from it)", view.effects_table(stats), "effects.csv"),
]
SHOWN_ROWS = 200  # a table's first rows on the page (all of them in its download): the page stays light on a large grid
for i, (title, table, name) in enumerate(tables_spec):
    with st.expander(title):
        st.dataframe(table.head(SHOWN_ROWS), hide_index=True)
        if len(table) > SHOWN_ROWS:
            st.caption(f"The first {SHOWN_ROWS} of {len(table):,} rows; the download holds them all.")
        st.download_button(f"Download {name} ({len(table):,} rows)", data=lambda t=table: t.to_csv(index=False).encode(), file_name=name,
                           mime="text/csv", key=f"pb_dl_{i}", on_click="ignore", icon=":material/download:")

# ---------------------------------------------------------------- A vs B
st.subheader("Setting A against setting B")
a_default, b_default = disagreement_grid.default_contrast(available, variants[0] if is_ioi and variants else None, grid_method)
for key, fb, default in ((keys["a"], 0, a_default), (keys["b"], 1, b_default)):
    if s.get(key) not in available:
        s[key] = default if default in available else available[min(fb, len(available) - 1)]
ca, cb, cu = st.columns([2, 2, 1])
a = ca.selectbox("Setting A (x axis)", available, key=keys["a"])
b = cb.selectbox("Setting B (y axis)", available, key=keys["b"])
units = cu.radio("Units", ("raw", "z"), key=keys["units"], horizontal=True, format_func={"raw": "effect", "z": "SDs (z)"}.get,
                 help="Metrics have different scales; z-scores put both axes in SDs of their own sweep.")
st.altair_chart(settings_scatter(view.scatter(stats, a, b), a, b, units), width="content")
row = view.pair(stats, a, b)
if row is not None:
    iv = f" (95 % interval {answer.span(row['spearman_lo'], row['spearman_hi'])})" if "spearman_lo" in row.index and row["spearman_lo"] == row["spearman_lo"] else ""
    st.caption(f"Dashed: the identity line. Spearman ρ = {row['spearman']:.3f}{iv}, Kendall τ = {row['kendall']:.3f}, top-{k} overlap = "
               f"{row['topk_jaccard']:.3f}, {int(row['sign_flips'])} sign flips (over the measured cells). Labelled points are detected under A or B."
               + (" Raw effects of different metrics have different units; switch to z to compare shapes." if units == "raw" else ""))
top = st.slider("How many components (the top of setting A)", 1, TOP_MAX, key=keys["top"])
st.altair_chart(rank_bump(view.ranks(stats, a, int(top)), available, int(top)), width="content")
st.caption(f"Each line follows one of the {top} components with the largest |effect| under A ({md_plain(a)}); a flat line near the top "
           "means every setting agrees it matters.")

# ---------------------------------------------------------------- why settings disagree; reproduce; share
st.subheader("Why settings can disagree")
grid = disagreement_grid.lookup_grid(base, runtime.store(), runtime.fingerprint_for(base.model, base.dtype), available)
for m in disagreement_text.mechanisms(grid):
    with st.expander(m["title"]):
        st.markdown(m["text"])

st.subheader("Reproduce and share")
url.copy_link(spec, extra | {"a": a, "b": b, "top": int(top), "units": units, "stat": stat, "rows": rows, "focus": s.get(keys["focus"])})
st.code(disagreement_text.cli_command(base, settings, k) + " --factors factors.csv --consensus cells.csv --summary", language="bash")
st.caption("The same numbers from the command line: it reads the same store (the stored sweeps and these statistics), computes only what is missing.")
runtime.bundle_button(list(dict.fromkeys(list(stored_keys.values()) + [stats_key])), f"the {len(available)} settings' sweeps and their statistics")
st.download_button("Download notebook", data=lambda: grid_notebook.notebook_json(base, available, k), file_name="patchboard_disagreement.ipynb",
                   mime="application/x-ipynb+json", on_click="ignore", icon=":material/code_blocks:", key="pb_nb_grid",
                   help="The same numbers and charts with the library's Python API; run it from the repository root (it reads the same store).")
extra.update(a=a, b=b, top=int(top), units=units, stat=stat, rows=rows, focus=s.get(keys["focus"]))
finish()
