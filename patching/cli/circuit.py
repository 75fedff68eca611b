"""``python -m patching circuit eval|curve``: circuits from the command line
(registered by :mod:`patching.cli`); everything the Circuits page shows.

    python -m patching circuit curve --task ioi --n-pairs 16 --scoring eap --points 20 --random 20 --out curve.csv
    python -m patching circuit curve --task ioi --n-pairs 16 --export-graph knee.json     # the circuit at the knee, EAP-IG/MIB JSON
    python -m patching circuit curve --task ioi --n 300 --hypothesis-out top300.json     # the top-300 circuit as a hypothesis
    python -m patching circuit eval --task ioi --edges "embed->*, 9.*->logits"
    python -m patching circuit eval --task ioi --graph circuit.json                       # an EAP-IG / MIB graph file's circuit
    python -m patching circuit eval --task ioi --hypothesis examples/ioi.json             # a hypothesis without positions

An edge's exact effect (the Circuits page's click) is the path sweep of that
one sender into that one receiver: ``python -m patching paths --senders S --receivers R``.
"""

from __future__ import annotations

import argparse
import json
import sys

from patching.circuit_requests import CURVE_FIELDS, SPEC_UNUSED, CircuitCurve, CircuitEval
from patching.cli.common import (Parser, add_compute_args, add_spec_args, bounded_int, compute_settings, created_text, print_origin,
                                 progress_bar, spec_from_args, table_format, write_table)
from patching.cli.paths import add_request_args, request_args
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_GRAPH_BYTES, read_user_file


def register(sub) -> None:
    p = sub.add_parser("circuit", help="circuits: evaluate one, or grow them by edge score (faithfulness curves, MIB's CPR/CMD)",
                       description="A circuit is a set of edges (sender -> receiver input); evaluating it runs the model with every "
                       "other edge carrying the corrupted value. Faithfulness = (m(C) - m(empty)) / (m(all) - m(empty)), MIB's.")
    csub = p.add_subparsers(dest="circuit_cmd", required=True, parser_class=Parser)

    e = csub.add_parser("eval", help="one circuit's faithfulness and every metric")
    add_spec_args(e, exclude=SPEC_UNUSED)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--edges", dest="req_edges", metavar="TEXT", help=CircuitEval.__dataclass_fields__["edges"].metadata["setting"].cli)
    src.add_argument("--edges-file", metavar="FILE", help="a file of edges in the circuit grammar (one or more per line, # comments)")
    src.add_argument("--graph", metavar="FILE", help="an EAP-IG / MIB graph JSON: its in-graph edges are the circuit")
    src.add_argument("--hypothesis", metavar="FILE", help="a hypothesis JSON whose paths hold at every position")
    _add_exports(e)
    e.set_defaults(func=cmd_eval)

    c = csub.add_parser("curve", help="grow circuits by edge score: the faithfulness curve beside random circuits")
    add_spec_args(c, exclude=SPEC_UNUSED)
    add_request_args(c, CURVE_FIELDS)
    c.add_argument("--out", help="write the curve (one row per size: top-n faithfulness, its interval, the random band) here")
    c.add_argument("--n", type=bounded_int("n", 1, 10_000_000), default=None, metavar="N",
                   help="the circuit to show and export: the top N edges (default: the knee of the curve)")
    _add_exports(c)
    c.set_defaults(func=cmd_curve)


def _add_exports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or one JSON object on stdout")
    p.add_argument("--export-graph", metavar="FILE", help="write the circuit as EAP-IG / MIB graph JSON (with the edge scores, if any)")
    p.add_argument("--hypothesis-out", metavar="FILE", help="write the circuit as a hypothesis JSON (the Paths page evaluates it)")
    p.add_argument("--edges-out", metavar="FILE", help="write the circuit's edges in the circuit grammar")
    p.add_argument("--bootstrap", type=bounded_int("bootstrap", 1, 100_000), default=1000, metavar="B",
                   help="bootstrap resamples for the intervals (default 1000)")
    add_compute_args(p)


def _check_outputs(a: argparse.Namespace) -> None:
    for name in ("export_graph", "hypothesis_out", "edges_out"):
        path = getattr(a, name, None)
        if path:
            table_format(path, "json")  # a bad path fails before any work


def _write(path: str, text: str, what: str) -> None:
    import os

    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise PatchboardError(what, f"cannot write {path!r} ({e.strerror}); check the folder exists and is writable") from None
    print(f"wrote {path}", file=sys.stderr)


def _exports(a: argparse.Namespace, geo, ids, scores=None, d_model: int = 0, note: dict | None = None) -> None:
    from patching.methods.circuit_graph import EdgeIndex, as_mask, canonical_text, to_hypothesis
    from patching.methods.graph_json import export_graph

    if a.export_graph:
        mask = as_mask(ids, EdgeIndex.of(geo).n_edges)
        _write(a.export_graph, export_graph(geo, mask, scores, d_model=d_model, note=note), "export-graph")
    if a.hypothesis_out:
        _write(a.hypothesis_out, json.dumps(to_hypothesis(ids, geo, name=f"circuit of {len(ids)} edges"), indent=1) + "\n", "hypothesis-out")
    if a.edges_out:
        _write(a.edges_out, canonical_text(ids, geo).replace(",", "\n") + "\n", "edges-out")


def _edges_text(a: argparse.Namespace) -> str:
    if a.req_edges is not None:
        return a.req_edges
    if a.edges_file:
        return read_user_file(a.edges_file, "edges-file")
    if a.graph:
        return read_user_file(a.graph, "graph", MAX_GRAPH_BYTES)
    return read_user_file(a.hypothesis, "hypothesis")


def cmd_eval(a: argparse.Namespace) -> int:
    from patching import service
    from patching.analysis.circuit_curve import circuit_interval
    from patching.core.spec import METRICS
    from patching.methods.graph import Geometry
    from patching.methods.path_request import data_label
    from patching.store import Store

    spec = spec_from_args(a)
    _check_outputs(a)
    text = _edges_text(a)
    req = CircuitEval(spec, text)
    geo = service.geometry_for(spec.model)
    if geo is not None:
        req = req.canonical(geo)  # a bad circuit fails before the model loads
    store = Store()
    executor = compute_settings(a)
    res = service.lookup(req, store) if geo is not None else None
    lm = None
    if res is None:
        lm = service.get_model(spec.model, spec.dtype)
        geo = Geometry.of(lm)
        res = service.run(CircuitEval(spec, text), store=store, lm=lm, progress=progress_bar("circuits"), executor=executor)
    req = res.request if res.request is not None else req.canonical(geo)
    row = res.table.iloc[0]
    lo, hi = circuit_interval(res.per_prompt, res.meta, a.bootstrap)
    if a.format == "json":
        out = {"n_edges": int(row["n_edges"]), "n_kept": int(row["n_kept"]), "n_nodes": int(row["n_nodes"]),
               "faithfulness": float(row["logit_diff"]), "faithfulness_ci": [lo, hi], **{m: float(row[m]) for m in METRICS if m in row},
               "baselines": res.baselines, "warnings": res.meta.get("warnings", []), "from_store": res.from_store,
               "spec": json.loads(req.spec.to_json()), "key": res.key}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    else:
        print_origin(res, f"circuit of {int(row['n_edges'])} edges · {data_label(req.spec, False)}", stored=f"computed {created_text(res.meta)}")
        print(f"faithfulness {float(row['logit_diff']):.4f}  95% CI [{lo:.4f}, {hi:.4f}]  ({int(row['n_kept'])} of {int(row['n_edges'])} edges "
              f"kept after pruning, {int(row['n_nodes'])} nodes; {res.meta['n_pairs']} prompts)")
        print("  " + "  ".join(f"{m} {float(row[m]):+.4f}" for m in METRICS if m in row))
    _exports(a, geo, list(req.parsed), d_model=_d_model(spec, lm), note={"source": "patchboard circuit eval", "model": spec.model})
    return 0


def _d_model(spec, lm) -> int:
    if lm is not None:
        return int(lm.cfg.d_model)
    from patching.core.registry import REGISTRY

    peek = REGISTRY.peek(spec.model)
    return int(peek.cfg.d_model) if peek is not None else 0


def cmd_curve(a: argparse.Namespace) -> int:
    import pandas as pd

    from patching import service
    from patching.analysis.circuit_curve import read_curve
    from patching.methods.circuit_curve import circuit_at, decode_scores
    from patching.methods.circuit_graph import EdgeIndex
    from patching.methods.graph import Geometry
    from patching.methods.path_request import data_label
    from patching.store import Store

    spec = spec_from_args(a)
    _check_outputs(a)
    if a.out:
        table_format(a.out, None)
    req = CircuitCurve(spec, **request_args(a, CURVE_FIELDS)).canonical(None)  # bad settings fail before the model loads
    store = Store()
    executor = compute_settings(a)
    res = service.lookup(req, store)
    lm = None
    if res is None:
        lm = service.get_model(spec.model, spec.dtype)
        res = service.run(req, store=store, lm=lm, progress=progress_bar("circuits"), executor=executor)
    geo = Geometry.of(lm) if lm is not None else service.geometry_for(spec.model)
    curve = read_curve(res.table, res.per_prompt, res.meta, a.bootstrap)
    n = a.n or curve.knee
    if n > curve.n_graph_edges:
        raise PatchboardError("n", f"the graph has {curve.n_graph_edges} edges; choose --n from 1 to {curve.n_graph_edges}")
    ids = circuit_at(res, n, geo)
    table = curve.top[["n_edges", "fraction", "n_kept", "n_nodes", "faithfulness", "lo", "hi"]].merge(
        curve.band[["n_edges", "mean", "lo", "hi"]].rename(columns={"mean": "random_mean", "lo": "random_lo", "hi": "random_hi"}),
        on="n_edges", how="left") if len(curve.band) else curve.top[["n_edges", "fraction", "n_kept", "n_nodes", "faithfulness", "lo", "hi"]]
    if a.format == "json":
        out = {"cpr": curve.cpr, "cmd": curve.cmd, "cpr_ci": list(curve.cpr_ci), "cmd_ci": list(curve.cmd_ci),
               "random_cpr": curve.random_cpr, "random_cmd": curve.random_cmd, "knee": curve.knee, "n": n,
               "curve": json.loads(pd.DataFrame(table).to_json(orient="records")), "warnings": res.meta.get("warnings", []),
               "from_store": res.from_store, "key": res.key, "spec": json.loads(res.request.spec.to_json())}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    else:
        print_origin(res, res.request.label(res), stored=f"computed {created_text(res.meta)}")
        print(f"scored by {res.meta['scoring']} on {res.meta['score_prompts']} held-out prompt(s) (seed {res.meta['score_seed']}), "
              f"evaluated on {res.meta['n_pairs']} · {data_label(res.request.spec, False)}", file=sys.stderr)
        print(curve.summary())
        write_table(table, a.out, None)
    scores = decode_scores(res.meta["scores"], EdgeIndex.of(geo).n_edges)
    note = {"source": "patchboard circuit curve", "model": spec.model, "scoring": res.meta["scoring"], "score": res.meta["score_metric"], "top_n": int(n)}
    _exports(a, geo, ids, scores, d_model=_d_model(spec, lm), note=note)
    return 0
