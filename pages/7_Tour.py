"""Guided tour: one real result of the shipped demo in six steps, for people
who don't code. Every step is a link (``?step=N``); every number is read from
the store (``patching.studies.disagreement.tour``), nothing is typed in.

Thin: take the step from the link, read the demo's IOI head sweep and its
grid's statistics, draw the step.
"""

from __future__ import annotations

import streamlit as st

from patching.core.spec import Spec
from patching.studies.disagreement import grid as disagreement_grid
from patching.studies.disagreement import tour, view
from ui import extras, runtime, timing, url
from ui import html as ui_html

ui_html.page_setup("Guided tour")
st.title("A guided tour")
st.caption("One real result of the shipped demo in six steps: what activation patching measures, and why the answer can depend on "
           "how you ask. Every number below is read from the stored results; nothing is typed in. No code needed.")

q = url.query()
n, msg = url.read_extra("step", q.get("step", "1"), 1, extras.int_in("step", 1, tour.N_STEPS))
if msg:
    st.warning(msg)
st.query_params.from_dict({"step": str(n)})  # the address bar shows the step (a page link within the page does not set it)

spec = Spec().validated()  # the demo's example: IOI, 8 pairs, heads, str, denoise
base = disagreement_grid.grid_base(spec)
stats, _, stats_key = runtime.grid_stats(base, disagreement_grid.default_settings(base), 10)
main = runtime.lookup_result(spec)
timing.mark("store read")
if stats is None or main is None or tour.main_setting(main) not in stats.settings:
    st.info("The tour reads the shipped demo, which is not in this server's store. Import it with `python -m patching demo import` "
            "(`make run` does it), then reload this page.")
    st.stop()

steps = tour.steps(stats, main)
step = steps[n - 1]

cols = st.columns(tour.N_STEPS)
for s, col in zip(steps, cols):
    with col:
        url.page_link("pages/7_Tour.py", label=f"{s.n}. {tour.SHORT[s.n - 1]}", query_params={"step": str(s.n)},
                      icon=":material/radio_button_checked:" if s.n == n else ":material/radio_button_unchecked:")

st.subheader(f"Step {n} of {tour.N_STEPS}: {step.title}")
if step.numbers:
    for (label, value), col in zip(step.numbers, st.columns(len(step.numbers))):
        col.metric(label, value)
st.markdown(step.text)

if n == 1:
    d = step.data
    ui_html.show_tokens(d["clean"], d["corrupt"], d["key_positions"], d["labels"], caption="The first pair as the model reads it (top: clean; bottom: corrupted; "
                                                                          "yellow: the swapped word).")
elif n == 2:
    import altair as alt
    import pandas as pd

    per = pd.DataFrame({"prompt pair": [str(i + 1) for i in range(len(step.data["per_prompt"]))], "share restored": step.data["per_prompt"]})
    st.altair_chart(alt.Chart(per).mark_bar(color="#1f4e9c").encode(
        x=alt.X("prompt pair:N", sort=None), y=alt.Y("share restored:Q", axis=alt.Axis(format="%"), title="share of the gap restored"),
        tooltip=[alt.Tooltip("prompt pair:N"), alt.Tooltip("share restored:Q", format=".0%")]).properties(width=360, height=200), width="content")
    st.caption(f"{step.data['component']}'s effect on each of the {len(per)} prompt pairs (1 = as on the clean prompt, 0 = as on the corrupted one).")
elif n == 3:
    from patching.analysis.detection import with_detection
    from ui import charts

    t, _ = with_detection(main.table, "logit_diff")
    st.vega_lite_chart(runtime.chart_spec((main.key, "tour-heatmap"), lambda: charts.heatmap(
        t, "head", "layer", metric="logit_diff", title="Every head, patched one at a time (str, denoise, logit difference)", cell=14)),
        width="content")
elif n == 4 and step.data.get("a"):
    from ui.charts import settings_scatter

    a, b = step.data["a"], step.data["b"]
    st.altair_chart(settings_scatter(view.scatter(stats, a, b), a, b, "z"), width="content")
    st.caption("Each dot is one head: its effect under the first setting (across) against the second (up), in standard deviations of each "
               "sweep. On the dashed line both agree; coloured dots are detected under one of them or both.")
elif n == 5:
    from ui import grid_charts

    cm = view.consensus_cells(stats, 12)
    st.vega_lite_chart(runtime.chart_spec((stats_key, "tour-consensus"), lambda: grid_charts.consensus_matrix(cm, view.settings_layout(stats))),
                       width="content")
    st.caption("Rows: the heads detected under the most settings; columns: every setting, grouped by its choices. Outlined: detected; "
               "a dot: detected in at least 95 % of resamples of the prompts.")

if step.link:
    page, query = step.link
    url.page_link(page, label="See this on the " + ("Patch" if "Patch" in page else "Disagreement") + " page", query_params=query,
                  icon=":material/open_in_new:")
prev, _, nxt = st.columns([1, 3, 1])
if n > 1:
    with prev:
        url.page_link("pages/7_Tour.py", label=f"← Step {n - 1}", query_params={"step": str(n - 1)})
if n < tour.N_STEPS:
    with nxt:
        url.page_link("pages/7_Tour.py", label=f"Step {n + 1} →", query_params={"step": str(n + 1)})
timing.mark("end")
