"""Beside a hypothesis' proportion explained, its baselines at the same
number of paths (:mod:`patching.studies.baselines`): the same paths with no
heads and random head sets of the same size. Read from the store (each
baseline is an evaluation like any other); one button computes the missing
ones. Numbers from the library; this module only lays them out."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from patching.core.errors import PatchboardError
from patching.studies import baselines
from ui import runtime
from ui.plain import md_plain


@st.cache_resource(show_spinner=False, max_entries=16)
def _parsed(text: str, n_layers: int, n_heads: int, n_kv: int) -> list:
    """(kind, parsed hypothesis) of the hypothesis and its baselines, parsed
    once per text and model shape (a rerun of the page parses nothing)."""
    from patching.methods.graph import Geometry
    from patching.methods.hypothesis_format import parse

    hyp = json.loads(text)
    geo = Geometry(n_layers, n_heads, n_kv)
    return [(kind, parse(h, geo)) for kind, h in [("hypothesis", hyp)] + baselines.baseline_hypotheses(hyp, n_layers, n_heads)]


def _stored(spec, text: str, geo) -> tuple[pd.DataFrame | None, list]:
    """The stored evaluations of the hypothesis and its baselines (None if any is missing) and the requests."""
    from patching import service

    todo = _parsed(text, geo.n_layers, geo.n_heads, geo.n_kv)
    reqs = [(kind, service.HypothesisEval(spec, h)) for kind, h in todo]
    rows = []
    for kind, req in reqs:
        res = runtime.lookup_result(req)
        if res is None:
            return None, reqs
        row = {"kind": kind, "name": res.meta.get("name", ""), "n_edges": res.meta.get("n_edges")}
        row.update({f"pe_{r['delta']}": r["proportion_explained"] for r in res.table.to_dict("records")})
        rows.append(row)
    return pd.DataFrame(rows), reqs


def show(spec, text: str, geo, delta: str) -> None:
    """The baselines of the hypothesis ``text`` on ``spec``'s prompts, once
    asked for (22 more hypotheses to parse and look up: not on every rerun
    of the page, so a shared server's page costs what it did)."""
    import hashlib

    st.markdown("**Against baselines at the same number of paths**")
    body = text if isinstance(text, str) else json.dumps(text)
    flag = "pb_baselines_" + hashlib.sha256(f"{spec.to_json()}|{body}".encode()).hexdigest()[:16]
    if not st.session_state.get(flag):
        st.caption(f"How much of the proportion explained do the hypothesis' heads add? The same paths with no heads, and "
                   f"{baselines.N_RANDOM} random head sets of the same size, on these prompts.")
        if st.button("Compare with the baselines", key="pb_hyp_baselines_show", icon=":material/compare_arrows:"):
            st.session_state[flag] = True
            st.rerun()
        return
    try:
        table, reqs = _stored(spec, body, geo)
    except (PatchboardError, ValueError) as e:
        st.caption(f"No baselines: {md_plain(str(e), 300)}")
        return
    if table is None:
        missing = sum(runtime.lookup_result(req) is None for _, req in reqs)
        st.caption(f"{missing} of the {len(reqs)} evaluations are not stored yet.")
        if st.button("Compute the baselines", key="pb_hyp_baselines", icon=":material/play_arrow:"):
            for _, req in reqs:
                if runtime.lookup_result(req) is None and runtime.run_request(req, "G_H") is None:
                    return
            st.rerun()
        return
    s = baselines.baselines_summary(table, delta)
    c1, c2, c3 = st.columns(3)
    c1.metric("No heads", f"{s['no_heads'] * 100:.1f} %", help="The same paths with every head removed: the MLP and embedding paths alone.")
    c2.metric("Heads add", f"{s['heads_add'] * 100:+.1f} points", help="The hypothesis' proportion explained minus the no-heads baseline.")
    c3.metric(f"Random head sets ({s['n_random']})", f"{s['random_median'] * 100:.1f} %",
              help="Median over random head sets of the same size (5-95 % range below).")
    st.caption(baselines.summary_sentence(s) + ".")


def held_out_note(spec, text: str, example: str) -> None:
    """When the page's prompts are the ones a derived hypothesis was chosen
    on, say so, quote its held-out score (the file's ``derived.evaluation``)
    and link the held-out view."""
    from dataclasses import replace

    from ui import url

    try:
        d = (json.loads(text) if isinstance(text, str) else dict(text)).get("derived") or {}
    except ValueError:
        return
    if d.get("function") != "derive_ioi_hypothesis" or spec.pairs is not None or spec.task != "ioi" or spec.seed != d.get("seed"):
        return
    ev = d.get("evaluation") or {}
    held = ""
    if ev.get("proportion_explained"):
        b = (ev.get("baselines") or {}).get("kl") or {}
        held = (f" On {ev['n_pairs']} prompts of seed {ev['seed']} it explains {ev['proportion_explained']['kl']:.1%} of the KL effect"
                + (f" (no heads {b['no_heads']:.1%}; {b['n_random']} random head sets, median {b['random_median']:.1%})" if b else "") + ".")
    st.warning(f"These are the prompts this hypothesis was derived from (seed {d.get('seed')}, {d.get('n_pairs')} pairs): its score here "
               f"is flattered by their noise.{held}")
    if ev.get("seed") is not None:
        q = replace(spec, seed=int(ev["seed"]), n_pairs=int(ev["n_pairs"])).to_query() | {"mode": "hypothesis", "example": example}
        url.page_link("pages/4_Paths.py", label=f"Score it on held-out prompts (seed {ev['seed']}, {ev['n_pairs']} pairs)",
                      query_params=q, icon=":material/science:")
