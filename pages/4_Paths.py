"""Paths: path patching. Sweep every sender into chosen receivers (Wang et
al.), or test a hypothesis made of paths (Goldowsky-Dill et al.): proportion
explained with AUE and ATE, and the per-token attribution over the prompt.

Thin: widgets and layout. Every widget, link parameter and command-line
flag of a request is declared once in :mod:`patching.requests`; every number
comes from ``patching.service`` (``PathSweep`` / ``HypothesisEval``) through
the store, the same rows ``python -m patching paths|hypothesis`` read and
write. A drawn result carries its request (``res.request``).
"""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path

import pandas as pd
import streamlit as st

from patching import service
from patching.analysis.detection import top_components, with_detection
from patching.analysis.formatting import fmt
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.methods import hypothesis_format, path_request
from patching.methods.hypothesis import attribution_table
from patching.circuit_requests import CIRCUITS_VIEW_FIELDS
from patching.requests import HYPOTHESIS_FIELDS, PATH_FIELDS, PATH_NAMES, VIEW_FIELDS
from ui.plain import md_plain
from ui import access, charts, estimate_error, panel, runtime, url
from ui import html as ui_html
from ui import timing

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("model", "task", "ioi_corrupt", "n_pairs", "seed", "pairs", "corruption", "mean_set", "noise_scale", "noise_samples",
          "key_positions", "metric", "direction", "dtype")
#: Built-in hypotheses: files shipped with the code. A link names one by key
#: or carries the hypothesis itself (``hypothesis=``), never a file path.
EXAMPLES = {"induction": ROOT / "examples" / "induction.json", "ioi": ROOT / "examples" / "ioi.json"}


def _example_text(name: str) -> str:
    try:
        return EXAMPLES[name].read_text(encoding="utf-8")
    except (KeyError, OSError):
        return json.dumps({"format": hypothesis_format.FORMAT, "name": "my hypothesis", "paths": [{"sender": "embed", "receiver": "logits"}]}, indent=1)


def cli_command(request, extra: list[str]) -> str:
    """The ``python -m patching paths|hypothesis`` line of a request: the
    spec fields it uses (the direction does not apply to hypotheses either),
    then its own flags."""
    drop = set(request.spec_unused) | ({"direction"} if request.kind == "hypothesis" else set())
    flags = [shlex.quote(a) for a in request.cli_args()] + extra
    return request.spec.to_cli(request.kind, extra=flags, only=tuple(f for f in FIELDS if f not in drop))


# ---------------------------------------------------------------- sweep


def _declared_input(column, name: str):
    """A path sweep's text parameter: label, help and link name from its declaration."""
    p = PATH_FIELDS[name]
    return column.text_input(p.label, key=url.param_widget(p), help=p.explain or None)


def sweep_view(spec: Spec, geo, extra: dict) -> None:
    c1, c2, c3 = st.columns([3, 2, 2])
    receivers = _declared_input(c1, "receivers")
    senders = _declared_input(c2, "senders")
    spos = _declared_input(c3, "sender_positions")
    form_p, method_p, steps_p, rule_p = PATH_FIELDS["form"], PATH_FIELDS["method"], PATH_FIELDS["ig_steps"], PATH_FIELDS["ig_rule"]
    form = st.radio(form_p.label, list(form_p.choices), horizontal=True, key=url.param_widget(form_p), format_func=form_p.options.get,
                    help=form_p.explain)
    m1, m2, m3 = st.columns([3, 1, 1])
    method = m1.radio(method_p.label, list(method_p.choices), horizontal=True, format_func=method_p.options.get,
                      key=url.param_widget(method_p), help=method_p.explain)
    steps, rule = steps_p.default, rule_p.default
    if method == "eap_ig":
        steps = int(m2.number_input(steps_p.label, min_value=int(steps_p.lo), max_value=int(steps_p.hi), step=1, key=url.param_widget(steps_p),
                                    help=steps_p.cli))
        rule = m3.selectbox(rule_p.label, list(rule_p.choices), format_func=rule_p.options.get, key=url.param_widget(rule_p), help=rule_p.cli)
    request = service.PathSweep(spec, receivers=receivers, senders=senders, sender_positions=spos, form=form, method=method, ig_steps=steps,
                                ig_rule=rule)
    extra.update(request.query())
    st.caption(
        "**direct** (Patchboard's joint direct paths): each sender's write difference (source run − base run) is added to "
        "every receiver's **own copy** of the residual stream in one run; every other path from the sender keeps its base "
        "value, and the run continues normally after the receivers. **tl_direct**: the same into **one receiver per run**, a "
        "row per sender → receiver (TransformerLens's get_act_patch_direct_path). **wang**: Wang et al.'s three steps: the "
        "difference is first carried through the MLPs with every other head frozen at its base value, and each receiver's "
        "input is set to its base value plus what it then sees, so sender → MLP → receiver paths count too. "
        "Receivers **logits** give each node's effect on the output."
    )
    try:
        path_request.check_method(method, form, steps, spec.corruption)
        if geo is not None:
            request.canonical(geo)  # checks the text
    except PatchboardError as e:
        ui_html.show_error(e)
        return
    if geo is None:
        st.info(f"The shape of {md_plain(spec.model)} is known once it is loaded: press the button to load it and run.")
    res = runtime.lookup_result(request) if geo is not None else None
    timing.mark("store read")
    if res is None and access.read_only():
        access.read_only_note("Computing a sweep that is not stored")
    elif res is None:
        st.info("This sweep is not stored yet. **Run the sweep** computes " + (
            "one patched run per sender that reaches a receiver (batched)" if method == "exact" else
            "every sender's estimate from one forward and one backward pass" + (f" per IG step ({steps})" if method == "eap_ig" else "")) +
            ", then stores it, so this link shows it at once afterwards.")
        if st.button("Run the sweep", type="primary", icon=":material/play_arrow:", key="pb_paths_run"):
            if runtime.run_request(request, "Path patching") is not None:
                st.rerun()
    if res is None:
        st.markdown("**Or from the command line**")
        ui_html.copy_box(cli_command(request, ["--out", "paths.csv"]), "Copy command", "command line", rows=3)
        return
    draw_sweep(spec, res)
    if method != "exact":
        estimate_error.compare_or_offer(res, res.request.exact(), method, spec.metric, "pb_paths_agree")
    st.markdown("**Reproduce from the command line**")
    ui_html.copy_box(cli_command(res.request, ["--out", "paths.csv"]), "Copy command", "command line", rows=3)


def draw_sweep(spec: Spec, res) -> None:
    meta, metric = res.meta, spec.metric
    described = [str(r) for r in (meta.get("receivers_described") or [res.receivers])[:20]]
    ui_html.stored_caption(meta, f"{meta.get('rows')} rows", f"receivers: {', '.join(described)}", provenance=res.provenance)
    runtime.recompute_button(res, "paths")
    t = res.table
    if "receiver" in t.columns:  # tl_direct: a row per sender → receiver edge; one receiver at a time
        names = list(dict.fromkeys(t["receiver"]))
        pick = st.selectbox("Receiver (one per run, as TransformerLens)", names, key="pb_paths_receiver")
        t = t[t["receiver"] == pick]
    emb = t[t["component"] == "embed"]
    grid = t[t["component"].isin(["head", "mlp"]) & t[metric].notna()].copy()
    if grid.empty:
        st.warning("No sender reaches these receivers (a receiver reads only earlier layers).")
        return
    grid["col"] = [str(int(h)) if c == "head" else "MLP" for c, h in zip(grid["component"], grid["head"].fillna(-1))]
    # The 2-SD rule per component kind: heads and MLPs write on different scales.
    td, ths = with_detection(grid, metric, by="component")
    td["label"] = [f"L{int(l)}" + (f"H{int(h)}" if c == "head" else " MLP") for l, h, c in zip(td["layer"], td["head"].fillna(-1), td["component"])]
    n_heads = int(meta.get("n_heads") or td["head"].max() + 1)
    how = f" · {meta['estimate']}" if meta.get("estimate") else {"eap": " · EAP estimate", "eap_ig": " · EAP-IG estimate"}.get(res.request.method, "")
    title = f"{charts.METRIC_TITLES.get(metric, metric)} via {res.receivers} · {spec.direction} · {spec.corruption}{how}" + (
        " · imported" if res.imported else "")
    ch = runtime.chart_spec((res.key, metric, "paths"), lambda: charts.heatmap(
        td, "col", "layer", metric=metric, title=title, x_title="sender head (and the layer's MLP)", y_title="sender layer",
        x_sort=[str(h) for h in range(n_heads)] + ["MLP"]))
    st.vega_lite_chart(ch, width="content")
    timing.mark("chart sent")
    d3, = ui_html.chart_downloads(ch, "paths", n_more=1)
    d3.download_button("CSV", data=lambda: res.export_table(metric).to_csv(index=False), file_name="patchboard_paths.csv", mime="text/csv",
                       key="pb_paths_csv", on_click="ignore", icon=":material/table_view:")
    runtime.bundle_button([res.key], "this sweep")
    runtime.notebook_button(res.request, "patchboard_paths.ipynb")
    blank = int(t[t["component"].isin(["head", "mlp"])][metric].isna().sum())
    notes = []
    if len(emb) and pd.notna(emb[metric].iloc[0]):
        notes.append(f"The embedding's direct path through these receivers: **{fmt(emb[metric].iloc[0])}**.")
    if blank:
        notes.append(f"{blank} sender(s) at or after the receivers' layers cannot reach them and are left blank.")
    rules = [f"{'heads' if kind == 'head' else 'MLPs'} outside [{fmt(th['lower'])}, {fmt(th['upper'])}]"
             for kind, th in ths.items() if th.get("sd") and th["sd"] == th["sd"]]
    if rules:
        notes.append(f"Outlined: the 2-SD rule, computed per component kind ({'; '.join(rules)}).")
    st.markdown(" ".join(notes))
    for w in meta.get("warnings") or []:
        st.caption(f"Note: {md_plain(w, 600)}.")
    top = top_components(td, 10).rename(columns={"value": metric, "label": "sender"})
    top = top[[c for c in ("sender", metric, "z", "detected") if c in top.columns]]
    ui_html.show_table(top, {metric: ".5f", "z": ".2f"}, signed=(metric,), caption="Strongest senders (either sign).")


# ---------------------------------------------------------------- hypothesis


def _set_example(ex_key: str, text_key: str) -> None:
    name = st.session_state[ex_key]
    if name in EXAMPLES:
        st.session_state[text_key] = _example_text(name)


def _edited(ex_key: str, text_key: str) -> None:
    name = st.session_state.get(ex_key)
    if name in EXAMPLES and st.session_state[text_key].strip() != _example_text(name).strip():
        st.session_state[ex_key] = "custom"


def parsed_hypothesis(text: str, geo):
    """The hypothesis parsed once per change of its text (or of the model's
    shape) in this session: a rerun of the page for any other widget reuses
    the parsed object, or the refusal, instead of parsing again."""
    memo = st.session_state.get("pb_hyp_parsed")
    if memo is not None and memo[0] == text and memo[1] == geo:
        if isinstance(memo[2], PatchboardError):
            raise memo[2]
        return memo[2]
    try:
        hyp = hypothesis_format.parse(text, geo)
    except PatchboardError as e:
        st.session_state["pb_hyp_parsed"] = (text, geo, e)
        raise
    st.session_state["pb_hyp_parsed"] = (text, geo, hyp)
    return hyp


def hypothesis_view(spec: Spec, geo, extra: dict) -> None:
    c1, c2, c3 = st.columns([3, 2, 1])
    example_p, delta_p, pair_p, text_p = VIEW_FIELDS["example"], VIEW_FIELDS["delta"], VIEW_FIELDS["pair"], HYPOTHESIS_FIELDS["hypothesis"]
    ex_key = url.param_widget(example_p)
    text_key = url.param_widget(text_p)
    if not st.session_state.get(text_key):
        st.session_state[text_key] = _example_text(st.session_state[ex_key])
    elif st.session_state[ex_key] in EXAMPLES and st.session_state[text_key].strip() != _example_text(st.session_state[ex_key]).strip():
        st.session_state[ex_key] = "custom"  # a link carrying its own hypothesis
    example = c1.selectbox(example_p.label, list(example_p.choices), format_func=example_p.options.get, key=ex_key,
                           on_change=_set_example, args=(ex_key, text_key), help=example_p.explain)
    delta = c2.selectbox(delta_p.label, list(delta_p.choices), format_func=delta_p.options.get, key=url.param_widget(delta_p))
    pair = c3.number_input(pair_p.label, min_value=int(pair_p.lo), max_value=int(pair_p.hi), step=1, key=url.param_widget(pair_p))
    text = st.text_area(text_p.label, key=text_key, height=220, on_change=_edited, args=(ex_key, text_key), help=text_p.explain)
    extra.update({example_p.flag: example, delta_p.flag: delta, pair_p.flag: int(pair)})
    if example == "custom" or text.strip() != _example_text(example).strip():
        extra[text_p.flag] = text_p.format(text)
    st.caption(
        "**G_H** runs the model with the clean input (x_r) on the hypothesis' paths and the pair's corrupted input (x_c) on every other "
        "path (Treeify, one shared x_c; under mean or zero ablation every other path carries its ablated value). The hypothesis' edges define its paths: every path from the input made only of listed edges. "
        "**AUE** = mean δ(model, G_H); **ATE** = mean δ(model on x_r, model on x_c); proportion explained = 1 − AUE/ATE "
        "(all paths: 100 %; none: 0 %). The direction setting does not apply here."
    )
    if geo is None:
        st.info(f"The shape of {md_plain(spec.model)} is known once it is loaded: press the button to load it and evaluate.")
        hyp = None
    else:
        try:
            hyp = parsed_hypothesis(text, geo)
        except PatchboardError as e:
            ui_html.show_error(e)
            return
        with st.expander(f"{md_plain(hyp.name, 120)}: {len(hyp.edges)} edge(s)" + (f" · {len(hyp.warnings)} note(s)" if hyp.warnings else "")):
            if hyp.description:
                st.text(hyp.description)  # plain text: never markdown from a link
            for w in hyp.warnings:
                st.caption(f"Note: {md_plain(w, 600)}.")
            st.dataframe(hyp.edges_table().head(500), hide_index=True, height=220)
    from ui import baselines as ui_baselines

    ui_baselines.held_out_note(spec, text, example)
    request = service.HypothesisEval(spec, text)
    res = runtime.lookup_result(service.HypothesisEval(spec, hyp)) if hyp is not None else None
    st.download_button("hypothesis.json", data=text, file_name="hypothesis.json", mime="application/json", key="pb_hyp_dl",
                       on_click="ignore", icon=":material/download:", help="This hypothesis as the file the command line reads.")
    if hyp is not None and all(e.positions is None for e in hyp.edges):  # a circuit holds at every position
        check = CIRCUITS_VIEW_FIELDS["check"]
        url.page_link("pages/6_Circuits.py", "Its faithfulness beside grown circuits (Circuits page)",
                      spec.to_query() | {"mode": "curve", check.flag: check.format(text)}, icon=":material/hub:")
    if res is None and access.read_only():
        access.read_only_note("Evaluating a hypothesis that is not stored")
    elif res is None:
        st.info("This evaluation is not stored yet. **Evaluate** runs G_H once over the dataset (one pass through the layers) and stores "
                "AUE, ATE and every pair's per-token attribution.")
        if st.button("Evaluate", type="primary", icon=":material/play_arrow:", key="pb_hyp_run"):
            if runtime.run_request(request, "G_H") is not None:
                st.rerun()
    else:
        draw_hypothesis(res, delta, int(pair))
        if geo is not None:
            ui_baselines.show(spec, text, geo, delta)
    st.markdown("**From the command line** (save the hypothesis as hypothesis.json)")
    ui_html.copy_box(cli_command(request, [f"--{delta_p.flag}", delta, f"--{pair_p.flag}", str(int(pair))]), "Copy command", "command line", rows=3)


def draw_hypothesis(res, delta: str, pair: int) -> None:
    meta = res.meta
    row = res.row(delta)
    ui_html.stored_caption(meta, f"{meta.get('rows')} rows", f"{meta.get('n_edges')} edges", provenance=res.provenance)
    runtime.recompute_button(res, "hypothesis")
    imp = ui_html.imported_suffix(res)
    c1, c2, c3, c4 = st.columns(4)
    pe = row["proportion_explained"]
    c1.metric("Proportion explained" + imp, "n/a" if pe != pe else f"{pe * 100:.1f} %", help="1 − AUE/ATE: how much of the effect of the input swap the hypothesis' paths carry.")
    c2.metric("AUE" + imp, fmt(row["aue"], 4), help="Average unexplained effect: mean δ between the model and G_H (lower is better).")
    c3.metric("ATE" + imp, fmt(row["ate"], 4), help="Average total effect: mean δ between the model on x_r and on x_c.")
    c4.metric("Worst pair" + imp, fmt(row["max_unexplained"], 4), help="The largest unexplained effect over the rows.")
    runtime.bundle_button([res.key], "this evaluation")
    runtime.notebook_button(res.request, "patchboard_hypothesis.ipynb")
    tbl = res.table.rename(columns={"proportion_explained": "explained"})
    tbl["delta"] = tbl["delta"].map(VIEW_FIELDS["delta"].options)
    ui_html.show_table(tbl, {"aue": ".4f", "ate": ".4f", "explained": ".1%", "max_unexplained": ".4f"}, caption="Every δ, from the same runs.")
    for w in meta.get("warnings") or []:
        st.caption(f"Note: {md_plain(w, 600)}.")
    st.subheader("Per-token attribution")
    n = len((meta.get("attribution") or {}).get("tokens") or [])
    if not n:
        st.info("This stored evaluation has no per-token attribution.")
        return
    if pair >= n:
        st.warning(f"Pair {pair} does not exist; the dataset has pairs 0-{n - 1}. Showing pair 0.")
        pair = 0
    att = attribution_table(meta, pair)
    st.markdown(
        f"Pair {pair}: each token is coloured by how much **G_H** raises (red) or lowers (blue) the loss of predicting it, compared with the "
        "clean run (E over the pair's counterfactuals). The second row is what no path at all would do, for scale."
    )
    show_attribution(att)


def show_attribution(att: pd.DataFrame) -> None:
    from patching.analysis.formatting import show_token

    m = max(1e-9, float(att[["attribution", "counterfactual"]].abs().to_numpy().max()))

    def cell(tok: str, v: float, tip: str) -> str:
        a = min(1.0, abs(v) / m)
        rgb = "214,40,40" if v > 0 else "40,90,214"
        return (f"<td style='background: rgba({rgb},{a:.3f}); color:{'white' if a > 0.55 else '#1f2328'}' "
                f"title='{html.escape(tip, quote=True)}'>{html.escape(show_token(tok))}</td>")

    rows = {"hypothesis": [], "no path": []}
    for r in att.itertuples():
        for name, col in (("hypothesis", "attribution"), ("no path", "counterfactual")):
            v = float(getattr(r, col))
            tip = (f"position {r.pos} predicting {r.target!r}: {v:+.4f} nats "
                   f"(clean {r.loss_clean:.3f}, G_H {r.loss_hypothesis:.3f}, corrupted {r.loss_counterfactual:.3f})")
            rows[name].append(cell(r.target, v, tip))
    head = "".join(f"<th>{r.pos + 1}</th>" for r in att.itertuples())
    body = "".join(f"<tr><th class='pb-rowh'>{k}</th>{''.join(v)}</tr>" for k, v in rows.items())
    st.html(
        "<style>.pb-att{border-collapse:separate;border-spacing:2px;font-family:ui-monospace,monospace;font-size:13px}"
        ".pb-att th{font-weight:400;color:#6b7280;font-size:11px}.pb-att th.pb-rowh{text-align:right;color:#31333f;font-size:13px;"
        "font-weight:600;padding-right:6px;font-family:sans-serif}.pb-att td{border-radius:4px;padding:2px 5px;white-space:pre;"
        "border:1px solid #e9ecef}</style>"
        f"<div style='overflow-x:auto'><table class='pb-att' aria-label='per-token attribution'><tr><th></th>{head}</tr>{body}</table></div>"
        f"<div style='font-size:12px;color:#6b7280'>Colour scale ±{m:.3f} nats · <span style='background:rgba(214,40,40,.6);padding:0 6px'>raises the loss</span> "
        "<span style='background:rgba(40,90,214,.6);padding:0 6px'>lowers it</span> · the last cell is the answer</div>"
    )
    with st.expander("The numbers"):
        ui_html.show_table(att.drop(columns=["loss_clean"]).rename(columns={"target": "predicts"}),
                      {"loss_hypothesis": ".4f", "loss_counterfactual": ".4f", "attribution": "+.4f", "counterfactual": "+.4f"},
                      signed=("attribution", "counterfactual"))


# ---------------------------------------------------------------- page

ui_html.page_setup("Paths")
widgets = panel.spec_panel(FIELDS, own=PATH_NAMES)  # the path method is the sweep's, not the Spec's
st.title("Path patching")
st.caption(
    "Which **routes** through the model carry the behaviour? A path runs from the input through heads and MLPs, each reading what "
    "earlier ones wrote into the residual stream. Sweep every sender into chosen receivers, or write down the paths you believe "
    "matter and measure how much of the behaviour they explain (Goldowsky-Dill et al., 2023)."
)
spec = widgets.spec
extra: dict = {}
mode_p = VIEW_FIELDS["mode"]
mode = st.radio(mode_p.label, list(mode_p.choices), format_func=mode_p.options.get, horizontal=True, key=url.param_widget(mode_p))
extra[mode_p.flag] = mode
if spec is None:
    st.info("One of the settings in the sidebar needs fixing (see the red box there); the results appear once it is valid.")
else:
    link_box = st.container()
    geo = path_request.geometry_for(spec.model)
    try:
        if mode == "sweep":
            sweep_view(spec, geo, extra)
        else:
            hypothesis_view(spec, geo, extra)
    except PatchboardError as e:
        ui_html.show_error(e)
    with link_box:
        url.copy_link(spec, extra)
    url.write_url(spec, extra)
widgets.render()
timing.mark("end")
