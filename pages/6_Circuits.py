"""Circuits: grow circuits by edge score and measure each one exactly (the
faithfulness curve beside random circuits, MIB's CPR and CMD), draw the
circuit at any size, click an edge for its exact effect and its estimate,
evaluate your own circuit or hypothesis, exchange circuits as EAP-IG / MIB
graph JSON.

Thin: take the request, get the result, draw. Every parameter is declared
once in :mod:`patching.circuit_requests`; every number comes from
``patching.service`` (``CircuitCurve`` / ``CircuitEval`` / ``PathSweep``)
through the store, the rows ``python -m patching circuit`` reads and writes;
the curve's summaries from :mod:`patching.analysis.circuit_curve`, the
drawing's layout from :mod:`patching.analysis.circuit_view`.
"""

from __future__ import annotations

import json
import shlex

import pandas as pd
import streamlit as st

from patching import service
from patching.analysis.circuit_curve import circuit_interval, read_curve
from patching.analysis.circuit_view import graph_tables
from patching.analysis.formatting import fmt
from patching.circuit_requests import CIRCUIT_FIELDS, CIRCUITS_VIEW_FIELDS, CURVE_FIELDS, CIRCUIT_NAMES, CURVE_NAMES, VIEW_NAMES
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.methods import path_request
from patching.methods.circuit_graph import EdgeIndex, as_mask, canonical_text, to_hypothesis
from patching.methods.graph_json import export_graph, parse_graph
from patching.requests import HYPOTHESIS_FIELDS
from ui import access, charts, circuit_charts, panel, runtime, url
from ui import html as ui_html
from ui import timing
from ui.plain import md_plain

FIELDS = ("model", "task", "ioi_corrupt", "n_pairs", "seed", "pairs", "corruption", "mean_set", "noise_scale", "noise_samples", "key_positions",
          "dtype")
VIEW = CIRCUITS_VIEW_FIELDS


def cli_command(request, sub: str, extra: list[str]) -> str:
    flags = [shlex.quote(a) for a in request.cli_args()] + extra
    return request.spec.to_cli(f"circuit {sub}", extra=flags, only=tuple(f for f in FIELDS if f not in request.spec_unused))


def _declared(column, p, **kw):
    """A declared parameter's widget: its label, choices, bounds, help and link name from the declaration."""
    key = url.param_widget(p)
    if p.kind == "choice":
        return column.selectbox(p.label or p.flag, list(p.choices), format_func=lambda v: p.options.get(v, v), key=key, help=p.explain or p.cli)
    return int(column.number_input(p.label or p.flag, min_value=int(p.lo), max_value=int(p.hi), step=1, key=key, help=p.explain or p.cli))


# ---------------------------------------------------------------- the curve


def curve_view(spec: Spec, geo, extra: dict) -> None:
    with st.expander("How the circuits are grown", icon=":material/tune:"):
        c1, c2, c3 = st.columns(3)
        vals = {"scoring": _declared(c1, CURVE_FIELDS["scoring"]), "score_direction": _declared(c2, CURVE_FIELDS["score_direction"]),
                "rank": _declared(c3, CURVE_FIELDS["rank"])}
        c4, c5, c6 = st.columns(3)
        vals["grid"] = _declared(c4, CURVE_FIELDS["grid"])
        vals["points"] = _declared(c5, CURVE_FIELDS["points"]) if vals["grid"] == "log" else CURVE_FIELDS["points"].default
        vals["random"] = _declared(c6, CURVE_FIELDS["random"])
        c7, c8, c9 = st.columns(3)
        vals["score_seed"] = _declared(c7, CURVE_FIELDS["score_seed"])
        vals["score_metric"] = _declared(c8, CURVE_FIELDS["score_metric"])
        vals["ig_steps"] = _declared(c9, CURVE_FIELDS["ig_steps"]) if vals["scoring"] == "eap_ig" else CURVE_FIELDS["ig_steps"].default
        vals["ig_rule"] = _declared(c9, CURVE_FIELDS["ig_rule"]) if vals["scoring"] == "eap_ig" else CURVE_FIELDS["ig_rule"].default
    request = service.CircuitCurve(spec, **vals).canonical(None)
    extra.update(request.query())
    st.caption(
        "Every edge (sender → receiver input) is **scored** on held-out prompts (EAP, EAP-IG or exactly); the **top n** edges form a "
        "circuit for each size n, and each circuit is **evaluated exactly** on these prompts: every edge outside it carries the "
        "corrupted value. **Faithfulness** = (m(C) − m(∅)) / (m(all) − m(∅)) with m the mean logit difference (MIB's), 1 = the circuit "
        "alone reproduces the clean behaviour. Grey: random circuits of the same sizes.")
    res = runtime.lookup_result(request)
    timing.mark("store read")
    if res is None and access.read_only():
        access.read_only_note("Growing circuits that are not stored")
        ui_html.copy_box(cli_command(request, "curve", ["--out", "curve.csv"]), "Copy command", "command line", rows=3)
        return
    if res is None:
        st.info(f"This curve is not stored yet. **Grow the circuits** scores every edge once ({request.scoring}), then evaluates "
                f"{request.random + 1} circuits per size, many per forward pass, and stores them, so this link shows them at once afterwards.")
        if st.button("Grow the circuits", type="primary", icon=":material/play_arrow:", key="pb_circ_run"):
            if runtime.run_request(request, "Circuits") is not None:
                st.rerun()
        st.markdown("**Or from the command line**")
        ui_html.copy_box(cli_command(request, "curve", ["--out", "curve.csv"]), "Copy command", "command line", rows=3)
        return
    curve = read_curve(res.table, res.per_prompt, res.meta)
    ui_html.stored_caption(res.meta, f"{res.meta.get('circuits_evaluated')} circuits on {res.meta.get('n_pairs')} prompts",
                           f"edges scored by {res.meta.get('scoring')} on {res.meta.get('score_prompts')} prompts (seed {res.meta.get('score_seed')})",
                           provenance=res.provenance)
    runtime.recompute_button(res, "curve")
    imp = ui_html.imported_suffix(res)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("CPR" + imp, fmt(curve.cpr, 3), help=f"Area under the faithfulness curve over the share of edges (MIB's; higher is better). 95% interval "
              f"{fmt(curve.cpr_ci[0], 3)} to {fmt(curve.cpr_ci[1], 3)}.")
    m2.metric("CMD" + imp, fmt(curve.cmd, 3), help=f"Area between the curve and 1 (MIB's; lower is better). 95% interval {fmt(curve.cmd_ci[0], 3)} "
              f"to {fmt(curve.cmd_ci[1], 3)}.")
    m3.metric("Random circuits: CPR", fmt(curve.random_cpr, 3), help="The same area for the random circuits' mean: the baseline.")
    m4.metric("Knee", f"{curve.knee} edges", help="Where the curve rises furthest above the diagonal from no edge (0) to every edge (1): "
              "past it an edge adds less faithfulness than the average edge does.")
    sizes = curve.top["n_edges"].astype(int).tolist()
    n_key = url.param_widget(VIEW["n"])
    if st.session_state.get(n_key) not in sizes:
        st.session_state[n_key] = curve.knee
    points = _checked_point(spec, geo, extra)
    n = st.select_slider("Circuit shown below (edges; the knee by default)", options=sizes, key=n_key)
    extra[VIEW["n"].flag] = int(n)
    ch = runtime.chart_spec((res.key, "curve", int(n), json.dumps(points.to_dict("records") if points is not None else [])),
                            lambda: circuit_charts.faithfulness_curve(curve.top, curve.band, curve.knee, int(n), points,
                                                                      title=f"Faithfulness of the top-n circuits · {request.scoring}"))
    st.vega_lite_chart(ch, width="content")
    ui_html.chart_downloads(ch, "faithfulness_curve")
    st.caption(curve.summary() + ". Intervals: 95 % expanded-percentile bootstrap over prompts (ratio of means).")
    for w in res.meta.get("warnings") or []:
        st.caption(f"Note: {md_plain(w, 600)}.")
    if geo is None:
        st.info(f"The shape of {md_plain(spec.model)} is known once it is loaded; the circuit is drawn then.")
        return
    from patching.methods.circuit_curve import circuit_at, decode_scores

    scores = decode_scores(res.meta["scores"], EdgeIndex.of(geo).n_edges)
    ids = circuit_at(res, int(n), geo)
    row = curve.top[curve.top["n_edges"] == int(n)].iloc[0]
    st.subheader(f"The top {int(n)} edges: faithfulness {fmt(row['faithfulness'], 3)}")
    sweep_spec = _edge_spec(spec, request.score_direction)
    draw_circuit(sweep_spec, geo, ids, scores, extra, method=request.scoring, ig_steps=request.ig_steps, ig_rule=request.ig_rule)
    exports(spec, geo, ids, scores, f"top {int(n)} edges by {request.scoring}")
    runtime.bundle_button([res.key], "this curve")
    runtime.notebook_button(res.request, "patchboard_circuits.ipynb")
    st.markdown("**Reproduce from the command line**")
    ui_html.copy_box(cli_command(res.request, "curve", ["--n", str(int(n)), "--out", "curve.csv"]), "Copy command", "command line", rows=3)


def _edge_spec(spec: Spec, direction: str) -> Spec:
    """The spec an edge's exact effect and estimate are computed on: these
    prompts, in the direction the edges were scored."""
    from dataclasses import replace

    return replace(spec, direction=direction).validated()


def _checked_point(spec: Spec, geo, extra: dict) -> pd.DataFrame | None:
    """Your circuit or hypothesis, evaluated on these prompts, as a point on the curve."""
    p = VIEW["check"]
    with st.expander("Your circuit or hypothesis on this curve", icon=":material/add_chart:"):
        text = st.text_area(p.label, key=url.param_widget(p), height=120, help=p.explain,
                            placeholder="embed->*, 9.*->logits   or a hypothesis JSON from the Paths page")
        if not text.strip():
            return None
        extra[p.flag] = p.format(text)
        request = service.CircuitEval(spec, text)
        if geo is None:
            st.info("The model's shape is known once it is loaded; press the button.")
            res = None
        else:
            request = request.canonical(geo)
            res = runtime.lookup_result(request)
        if res is None and access.read_only():
            access.read_only_note("Evaluating a circuit that is not stored")
            return None
        if res is None:
            if st.button("Evaluate it", key="pb_circ_check_run", icon=":material/play_arrow:"):
                if runtime.run_request(request, "Circuit") is not None:
                    st.rerun()
            return None
        r = res.table.iloc[0]
        lo, hi = circuit_interval(res.per_prompt, res.meta)
        st.markdown(f"**{int(r['n_edges'])} edges** ({int(r['n_kept'])} kept after pruning): faithfulness **{fmt(r['logit_diff'], 3)}** "
                    f"(95 % interval {fmt(lo, 3)} to {fmt(hi, 3)}), the pink point on the curve.")
        return pd.DataFrame([{"n_edges": int(r["n_edges"]), "faithfulness": float(r["logit_diff"]), "name": "your circuit"}])


# ---------------------------------------------------------------- one circuit


def circuit_view(spec: Spec, geo, extra: dict) -> None:
    p = CIRCUIT_FIELDS["edges"]
    key = url.param_widget(p)
    up = st.file_uploader("Or open an EAP-IG / MIB graph JSON (its in-graph edges; .json.gz for large models)", type=["json", "gz"],
                          key="pb_circ_upload")
    if up is not None and geo is not None and st.button("Use this file", key="pb_circ_use"):
        try:
            g = parse_graph(up.getvalue(), geo)
            st.session_state[key] = canonical_text(g.edges, geo)
            st.rerun()
        except PatchboardError as e:
            ui_html.show_error(e)
    if not st.session_state.get(key):
        st.session_state[key] = "embed->*, *->logits"
    text = st.text_area(p.label, key=key, height=140, help=p.explain)
    request = service.CircuitEval(spec, text)
    extra[p.flag] = p.format(text)
    st.caption("Edges **SENDER->RECEIVER** (embed, L.H, mlpL → L.H:q|k|v, mlpL, logits; `*` and ranges such as `9-11.*` allowed; one "
               "item per line or comma). The circuit keeps these edges; every other edge carries the corrupted value. A sender that "
               "no kept path reaches from embed is pruned (EAP-IG's rule).")
    if geo is None:
        st.info(f"The shape of {md_plain(spec.model)} is known once it is loaded: press the button to load it and evaluate.")
        res = None
    else:
        request = request.canonical(geo)
        res = runtime.lookup_result(request)
    if res is None and access.read_only():
        access.read_only_note("Evaluating a circuit that is not stored")
        return
    if res is None:
        st.info("This circuit is not stored yet. **Evaluate** runs it once over the dataset and stores every metric.")
        if st.button("Evaluate", type="primary", icon=":material/play_arrow:", key="pb_circ_eval"):
            if runtime.run_request(request, "Circuit") is not None:
                st.rerun()
        return
    r = res.table.iloc[0]
    lo, hi = circuit_interval(res.per_prompt, res.meta)
    ui_html.stored_caption(res.meta, f"{res.meta.get('n_pairs')} prompts", f"{int(r['n_edges'])} edges", provenance=res.provenance)
    runtime.recompute_button(res, "circuit")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Faithfulness" + ui_html.imported_suffix(res), fmt(r["logit_diff"], 3), help=f"(m(C) − m(∅)) / (m(all) − m(∅)), MIB's; 95% interval {fmt(lo, 3)} to {fmt(hi, 3)}.")
    c2.metric("Edges kept", f"{int(r['n_kept'])} of {int(r['n_edges'])}", help="After pruning (EAP-IG's rule).")
    c3.metric("Nodes", int(r["n_nodes"]))
    c4.metric("KL effect", fmt(r["kl"], 4), help="KL(clean‖corrupted) − KL(clean‖circuit): how much closer the circuit brings the whole prediction.")
    for w in res.meta.get("warnings") or []:
        st.caption(f"Note: {md_plain(w, 600)}.")
    ids = list(res.request.parsed)
    draw_circuit(_edge_spec(spec, "noise" if spec.corruption in ("mean", "zero") else "denoise"), geo, ids, None, extra)
    exports(spec, geo, ids, None, "circuit")
    runtime.bundle_button([res.key], "this circuit")
    runtime.notebook_button(res.request, "patchboard_circuit.ipynb")
    st.markdown("**Reproduce from the command line** (save the edges as circuit.txt)")
    ui_html.copy_box(cli_command(res.request, "eval", []), "Copy command", "command line", rows=3)


# ---------------------------------------------------------------- drawing, edges, exports


def draw_circuit(spec: Spec, geo, ids, scores, extra: dict, method: str | None = None, ig_steps: int = 5, ig_rule: str = "left") -> None:
    nodes, edges, info = graph_tables(ids, geo, scores)
    if not len(edges):
        st.info("After pruning no edge is left: no kept path leads from embed to the logits, so this circuit is the corrupted run.")
        return
    more = f" (the {info['drawn']} strongest of {info['kept']} drawn)" if info["drawn"] < info["kept"] else ""
    st.caption(f"{info['kept']} of {info['asked']} edges kept after pruning{more}. Layers run top to bottom; line width = |score|; "
               "colour = the receiver's input. **Click an edge** for its exact effect and its estimate (double-click clears).")
    ch = charts.spec_of(circuit_charts.circuit_graph(nodes, edges, geo.n_heads))
    event = st.vega_lite_chart(ch, width="content", on_select="rerun", selection_mode="edge", key="pb_circ_graph")
    picked = ((event or {}).get("selection", {}).get("edge") or [])
    e_key = url.param_widget(VIEW["edge"])
    if picked:
        st.session_state[e_key] = str(picked[0].get("label", ""))
    label = st.session_state.get(e_key, "")
    if label and label in set(edges["label"]):
        extra[VIEW["edge"].flag] = label
        edge_detail(spec, edges[edges["label"] == label].iloc[0], method, ig_steps, ig_rule)
    with st.expander(f"Every edge kept ({info['kept']})"):
        ui_html.show_table(edges[["label", "port", "score"]].rename(columns={"label": "edge", "port": "into"}), {"score": ".4g"})


def edge_detail(spec: Spec, e, method: str | None, ig_steps: int, ig_rule: str = "left") -> None:
    """One edge on its own: its exact direct-path effect (the path sweep of
    that sender into that receiver) and, from the same prompts, its EAP or
    EAP-IG estimate; the curve's ranking score beside them."""
    exact = service.PathSweep(spec, receivers=e["receiver"], senders=e["sender"])
    est = (service.PathSweep(spec, receivers=e["receiver"], senders=e["sender"], method=method, ig_steps=ig_steps, ig_rule=ig_rule)
           if method in ("eap", "eap_ig") else None)
    got = {k: runtime.lookup_result(r) for k, r in (("exact", exact), ("estimate", est)) if r is not None}
    st.markdown(f"**Edge {md_plain(e['label'])}** · {spec.direction} · normalised logit difference (1 = the whole clean − corrupted gap)")
    c1, c2, c3 = st.columns(3)
    for col, k, title in ((c1, "exact", "Exact effect (direct path)"), (c2, "estimate", f"Estimate ({method})")):
        r = got.get(k)
        if r is not None:
            col.metric(title, fmt(float(r.table["logit_diff"].iloc[0]), 4))
    if pd.notna(e["score"]):
        c3.metric("Score used for ranking", fmt(float(e["score"]), 4), help="From the scoring prompts (held out).")
    todo = [r for k, r in (("exact", exact), ("estimate", est)) if r is not None and got.get(k) is None]
    if todo and access.read_only():
        access.read_only_note("Computing this edge's effect")
    elif todo and st.button("Compute this edge's exact effect" + (" and its estimate" if len(todo) > 1 else ""), key="pb_circ_edge_run"):
        for r in todo:
            runtime.run_request(r, "Edge")
        st.rerun()
    st.caption("Exact: this sender's write difference added to this receiver's input alone, the run continued (the Paths page's sweep "
               f"with this one sender and receiver: `python -m patching paths --senders {md_plain(e['sender'])} --receivers {md_plain(e['receiver'])}`).")


def exports(spec: Spec, geo, ids, scores, name: str) -> None:
    ix = EdgeIndex.of(geo)
    hyp = to_hypothesis(ids, geo, name=name, description=f"{len(ids)} edges from Patchboard's Circuits page")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Graph JSON (EAP-IG / MIB)", data=lambda: export_graph(geo, as_mask(ids, ix.n_edges), scores, d_model=_d_model(spec),
                                                                           note={"source": "patchboard", "model": spec.model, "name": name}),
                       file_name="circuit_graph.json", mime="application/json", on_click="ignore", icon=":material/download:", key="pb_circ_graph_dl")
    c2.download_button("Hypothesis JSON", data=json.dumps(hyp, indent=1), file_name="circuit_hypothesis.json", mime="application/json",
                       on_click="ignore", icon=":material/download:", key="pb_circ_hyp_dl")
    text_p = HYPOTHESIS_FIELDS["hypothesis"]
    with c3:
        url.page_link("pages/4_Paths.py", "Open as a hypothesis on Paths", spec.to_query() | {"mode": "hypothesis", "example": "custom",
                                                                                              text_p.flag: text_p.format(hyp)},
                      icon=":material/route:")


def _d_model(spec: Spec) -> int:
    from patching.core.registry import REGISTRY

    lm = REGISTRY.peek(spec.model)
    return int(lm.cfg.d_model) if lm is not None else 0


# ---------------------------------------------------------------- page

ui_html.page_setup("Circuits")
widgets = panel.spec_panel(FIELDS, own=CIRCUIT_NAMES + CURVE_NAMES + VIEW_NAMES)
st.title("Circuits")
st.caption(
    "Which **small set of edges** reproduces the behaviour on its own? Score every edge, keep the best n, and measure exactly how "
    "much of the clean − corrupted gap each circuit recovers when every other edge is corrupted, beside random circuits of the same "
    "size (EAP-IG, Hanna et al. 2024; MIB's circuit track).")
spec = widgets.spec
extra: dict = {}
mode_p = VIEW["mode"]
mode = st.radio(mode_p.label, list(mode_p.choices), format_func=mode_p.options.get, horizontal=True, key=url.param_widget(mode_p))
extra[mode_p.flag] = mode
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the results appear once it is valid.")
else:
    link_box = st.container()
    geo = path_request.geometry_for(spec.model)
    try:
        if mode == "curve":
            curve_view(spec, geo, extra)
        else:
            circuit_view(spec, geo, extra)
    except PatchboardError as e:
        ui_html.show_error(e)
    with link_box:
        url.copy_link(spec, extra)
    url.write_url(spec, extra)
widgets.render()
timing.mark("end")
