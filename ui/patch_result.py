"""The Patch page's result, drawn from its report
(:mod:`patching.analysis.result_report`): the charts (a click on a cell opens
that component), the 2-SD detections and the strongest components, the
error against exact patching of an estimate, and the downloads.
"""

from __future__ import annotations

import json

import streamlit as st

from patching.analysis.formatting import fmt, pairs_to_text
from patching.analysis.result_report import ResultReport, result_report
from patching.core.spec import HEAD_BY_POS_COMPONENTS, HEAD_COMPONENTS, Spec
from patching.results import table_records
from ui import charts, drill, estimate_error, extras, runtime, timing, url
from ui.plain import md_plain
from ui import html as ui_html


def pick_view(name: str, options: list, default) -> str:
    """Key of a view selectbox whose choice travels in the URL as ``name``."""
    key = url.url_widget(name, None, extras.text(name))
    cur = st.session_state.get(key)
    match = [o for o in options if str(o) == str(cur)]
    st.session_state[key] = match[0] if match else default
    return key


def draw_result(spec: Spec, res, chart_box, view: dict) -> None:
    """The charts (first, into ``chart_box``), then detection, table, downloads;
    ``view`` gains the view's URL parameters (cell, view-pos, view-head)."""
    report = result_report(res.table, spec.metric, runtime.intervals(res), unsigned=res.unsigned)
    with chart_box:
        draw_charts(spec, res, report, view)
    draw_detection(spec, res, report)
    if spec.method != "exact":
        estimate_error.compare_or_offer(res, spec.with_(method="exact"), spec.method, spec.metric, "pb_agree")
    draw_downloads(spec, res)


def _maps(spec: Spec, res, report: ResultReport, view: dict) -> list[tuple[str, dict]]:
    """(name, Vega-Lite spec) of each map of this component, built once per
    stored result and view (Altair skipped on a link opened again)."""
    t, metric = report.table, spec.metric
    title = f"{charts.METRIC_TITLES.get(metric, metric)} · {spec.direction} · {spec.corruption}"

    def chart(name: str, build, *view_key) -> tuple[str, dict]:
        return name, runtime.chart_spec((res.key, metric, spec.component, name, *view_key), build)

    if spec.component in HEAD_COMPONENTS:
        return [chart("heads", lambda: charts.heatmap(t, "head", "layer", metric=metric, select=True, title=f"Heads: {title}",
                                                      x_title="head", y_title="layer"))]
    if spec.component in HEAD_BY_POS_COMPONENTS:
        best, heads, pos_order = report.strongest(), report.heads(), report.pos_order
        c1, c2 = st.columns(2)
        pos_choice = c1.selectbox("Position for the layer × head map", pos_order, key=pick_view("view-pos", pos_order, best["pos_label"]),
                                  help="Head-by-position results have three axes; pick the position to show.")
        head_choice = c2.selectbox("Head for the layer × position map", heads, key=pick_view("view-head", heads, int(best["head"])))
        view.update({"view-pos": pos_choice, "view-head": head_choice})
        return [chart("heads_at_position", lambda: charts.heatmap(
                    t[t["pos_label"] == pos_choice], "head", "layer", metric=metric, select=True,
                    title=f"Heads at {pos_choice.strip()}: {title}", x_title="head", y_title="layer"), pos_choice),
                chart("head_by_position", lambda: charts.heatmap(
                    t[t["head"] == head_choice], "pos_label", "layer", metric=metric, select=True, title=f"Head {head_choice} by position: {title}",
                    x_title="position (token)", y_title="layer", x_sort=pos_order), head_choice)]
    wtxt = f" (window {spec.window})" if spec.window > 1 else ""
    return [chart("layer_by_position", lambda: charts.heatmap(
        t, "pos_label", "layer", metric=metric, select=True, title=f"{spec.component}{wtxt}: {title}",
        x_title="position (token)", y_title="layer", x_sort=report.pos_order), spec.window)]


def draw_charts(spec: Spec, res, report: ResultReport, view: dict) -> None:
    """The maps with their downloads, the drill-down of a clicked cell and,
    for a window, the line chart against the summation baseline."""
    events = []
    for name, ch in _maps(spec, res, report, view):
        events.append(st.vega_lite_chart(ch, width="content", on_select="rerun", selection_mode="cell", key=f"pb_sel_{name}"))
        timing.mark("chart sent")
        ui_html.chart_downloads(ch, name)
    cell = drill.current_cell(next((e for e in events if e and e.get("selection", {}).get("cell")), None))
    view["cell"] = cell or None
    if cell:
        drill.drill_down(spec, res, cell)
    else:
        st.caption("Click a cell to open that component: its value under every metric, its effect by position and, for a head, "
                   "its attention pattern.")
    if spec.window > 1:
        labels = report.position_labels()
        opts = sorted(labels)
        pos_choice = st.columns([2, 5])[0].selectbox("Position for the window line chart", opts, format_func=lambda p: labels[p].strip(),
                                                     key=pick_view("view-pos", opts, report.window_position(res.meta.get("key_positions"))),
                                                     help="The joint effect of the window and the sum of single layers, at this position.")
        view["view-pos"] = pos_choice
        lc = charts.window_lines(res.table, spec.metric, pos_choice, labels[pos_choice].strip(),
                                 title=f"Window of {spec.window} layers vs the summation baseline at {labels[pos_choice].strip()}")
        st.altair_chart(lc, width="content")
        ui_html.chart_downloads(lc, "window_lines")


def draw_detection(spec: Spec, res, report: ResultReport) -> None:
    """The 2-SD rule's verdict and the strongest components (with their
    intervals when the result has per-prompt values)."""
    metric, th = spec.metric, report.thresholds
    noop = (f" The {report.n_unmeasured} grey cells are zero by construction (patched only where both prompts are identical): "
            "they are not measurements, so they are left out of the rule, the ranking and every statistic." if report.n_unmeasured else "")
    if report.unsigned:
        st.markdown("**AtP\\* estimates the size of each effect, not its sign** (GradDrop estimates |effect|, Kramár et al. 2024), so "
                    f"the map and the list rank |{metric}|; read signs from exact patching or AtP.")
    if report.detects:
        sides = (f"Detected: **{report.n_positive}** (solid black outline)." if report.unsigned else
                 f"Detected: **{report.n_positive} positive** (solid black outline) and **{report.n_negative} negative** (dashed magenta "
                 "outline: the component works *against* the answer).")
        st.markdown(
            f"**2-SD rule** (Zhang & Nanda): a component is *detected* when its effect is more than 2 standard deviations from "
            f"the mean over the {report.n_measured} measured components (outside [{fmt(th['lower'])}, {fmt(th['upper'])}]). {sides}{noop}"
        )
    else:
        st.markdown("**2-SD rule**: every component has (almost) the same effect here, so nothing is detected." + noop)
    st.markdown("**Top components** (largest |effect|; z = standard deviations from the mean)" if report.unsigned else
                "**Top components** (largest effect, either sign; z = standard deviations from the mean)")
    if report.intervals is not None:
        from patching.analysis.uncertainty import width_note

        st.altair_chart(charts.top_bars(report.top, metric), width="content")
        note = width_note(res.table, report.intervals, metric)
        if note:
            st.warning(note)
        st.caption(f"Bars: 95 % bootstrap intervals over the {md_plain(res.meta.get('n_pairs'))} prompts (1,000 resamples, seeded); "
                   "'detected in' = the share of resamples in which the 2-SD rule detects the component.")
    shown = f"|{metric}|" if report.unsigned else metric
    ui_html.show_table(report.top_table(), {shown: ".5f", "z": ".2f", "95% from": ".5f", "95% to": ".5f", "detected in": ".0%"},
                       signed=() if report.unsigned else (metric,))


def draw_downloads(spec: Spec, res) -> None:
    """CSV and JSON of the numbers, the bundle, the notebook, the command line."""
    st.markdown("**Download the numbers**")
    export = res.export_table(spec.metric)
    payload = {"spec": spec.to_dict(), "cli": spec.to_cli(), "baselines": res.baselines, "meta": res.meta,
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
