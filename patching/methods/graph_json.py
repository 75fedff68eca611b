"""Circuits in EAP-IG's graph JSON, the format MIB's circuit track exchanges.

The file (``Graph.to_json`` in hannamw/EAP-IG, ``circuits/*.json`` in MIB)::

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m0": {...}, ..., "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": -0.0003, "in_graph": false}, ..., "a0.h1->m3": {...}, ..., "m11->logits": {...}}}

Nodes: ``input`` (Patchboard's ``embed``), ``a{L}.h{H}`` (head H of layer L),
``m{L}`` (MLP L), ``logits``. Edges: ``PARENT->CHILD`` with ``<q>``, ``<k>`` or
``<v>`` after a head child. Both are listed in EAP-IG's order
(``Graph.from_model``: per layer, every earlier node into each head's q, k, v,
then into the MLP; last, every node into logits), which :func:`export_graph`
reproduces byte for byte (``json.dumps`` with its default separators).

Grouped-query attention: EAP-IG ungroups it (``ungroup_grouped_query_attention``),
so its file has a key and a value edge per query head; Patchboard's receiver
is the KV group's input (:mod:`patching.methods.graph`). Exporting writes the
group edge on each of its heads with the group's ``in_graph`` and the group's
score divided by the group size (the ungrouped edges' EAP scores add up to the
group's); importing requires the heads of a group to agree on ``in_graph`` and
adds their scores. ``cfg`` then carries ``n_key_value_heads``.

Import is strict and bounded (:func:`parse_graph`): the text's size (a
``.json.gz`` inflates to at most the same bound) and nesting before parsing, then exactly the node and edge names of the model's
graph (none missing, none extra, none twice), booleans and finite scores.
Node flags are read but not used: a circuit is its edges (EAP-IG's
``evaluate_graph`` recomputes the nodes when it prunes), and they are kept
so a file round-trips. Neuron-level graphs are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from patching.core.codec import json_depth
from patching.core.errors import PatchboardError
from patching.core.limits import MAX_GRAPH_BYTES, check_text
from patching.methods.circuit_graph import EdgeIndex, prune
from patching.methods.graph import EMBED, Geometry, Node, Receiver

FIELD = "graph"
_CFG_KEYS = {"n_layers", "n_heads", "parallel_attn_mlp", "d_model", "n_key_value_heads"}
#: Patchboard's note in an exported file (EAP-IG ignores unknown top-level keys).
NOTE_KEY = "patchboard"


def node_name(n: Node) -> str:
    return "input" if n.kind == "embed" else f"a{n.layer}.h{n.head}" if n.kind == "head" else f"m{n.layer}"


def eap_nodes(geo: Geometry) -> list[str]:
    """EAP-IG's node order: input, per layer its heads then its MLP, logits."""
    out = ["input"]
    for l in range(geo.n_layers):
        out += [f"a{l}.h{h}" for h in range(geo.n_heads)] + [f"m{l}"]
    return out + ["logits"]


def eap_edges(geo: Geometry) -> list[tuple[str, int]]:
    """EAP-IG's edge order, each name with the Patchboard edge it stands for."""
    return list(_eap_edges(geo))


@lru_cache(maxsize=8)
def _eap_edges(geo: Geometry) -> tuple[tuple[str, int], ...]:
    ix = EdgeIndex.of(geo)
    out: list[tuple[str, int]] = []
    stream: list[Node] = [EMBED]
    for l in range(geo.n_layers):
        for s in stream:
            for h in range(geo.n_heads):
                for p in "qkv":
                    r = Receiver(p, l, h if p == "q" else geo.group(h))
                    out.append((f"{node_name(s)}->a{l}.h{h}<{p}>", ix.edge(s, r)))
        stream = stream + [Node("head", l, h) for h in range(geo.n_heads)]
        for s in stream:
            out.append((f"{node_name(s)}->m{l}", ix.edge(s, Receiver("mlp", l))))
        stream = stream + [Node("mlp", l)]
    logits = Receiver("logits", geo.n_layers)
    out += [(f"{node_name(s)}->logits", ix.edge(s, logits)) for s in stream]
    return tuple(out)


@dataclass
class GraphFile:
    """A graph file on Patchboard's edge index: ``in_graph`` [E] bool,
    ``scores`` [E] float64; the file's node flags (and node scores, if any)
    as given, so it exports back unchanged; its Patchboard note."""

    geo: Geometry
    in_graph: np.ndarray
    scores: np.ndarray
    cfg: dict
    node_flags: dict[str, bool] | None = None
    node_scores: dict[str, float] | None = None
    note: dict = field(default_factory=dict)

    @property
    def edges(self) -> np.ndarray:
        return np.flatnonzero(self.in_graph)


# ---------------------------------------------------------------- export


def export_graph(geo: Geometry, in_graph: np.ndarray, scores: np.ndarray | None = None, *, d_model: int | None = None,
                 node_flags: dict[str, bool] | None = None, node_scores: dict[str, float] | None = None,
                 note: dict | None = None, cfg: dict | None = None) -> str:
    """The graph JSON of a circuit (``in_graph`` [E] bool over the edge index)
    with its edge scores (0.0 where none). Node flags, unless given, are
    EAP-IG's after ``prune``: a node is in the graph when a kept edge leaves
    it and one enters it (input: leaves it); logits always."""
    ix = EdgeIndex.of(geo)
    in_graph = np.asarray(in_graph, dtype=bool)
    scores = np.zeros(ix.n_edges) if scores is None else np.asarray(scores, dtype=np.float64)
    if in_graph.shape != (ix.n_edges,) or scores.shape != (ix.n_edges,):
        raise ValueError("in_graph and scores must hold one value per edge of the model's graph")
    if cfg is None:
        cfg = {"n_layers": geo.n_layers, "n_heads": geo.n_heads, "parallel_attn_mlp": False, "d_model": int(d_model or 0)}
        if geo.gqa:
            cfg["n_key_value_heads"] = geo.n_kv
    if node_flags is None:
        node_flags = _derived_flags(geo, prune(in_graph, ix))
    nodes: dict[str, dict] = {}
    for name in eap_nodes(geo):
        nodes[name] = {"in_graph": bool(node_flags.get(name, name == "logits"))}
        if node_scores is not None and name in node_scores:
            nodes[name]["score"] = float(node_scores[name])
    share = 1.0 / geo.group_size
    edges: dict[str, dict] = {}
    for name, e in _eap_edges(geo):
        s = float(scores[e])
        if geo.gqa and name.endswith(("<k>", "<v>")):
            s = s * share
        edges[name] = {"score": s, "in_graph": bool(in_graph[e])}
    d: dict[str, Any] = {"cfg": cfg, "nodes": nodes, "edges": edges}
    if note:
        d[NOTE_KEY] = note
    return json.dumps(d)


def _derived_flags(geo: Geometry, kept: np.ndarray) -> dict[str, bool]:
    ix = EdgeIndex.of(geo)
    sends = np.zeros(len(ix.senders), dtype=bool)
    sends[ix.sender[kept]] = True
    gets = np.zeros(len(ix.senders), dtype=bool)
    node_of = ix.node_of_receiver()
    for ri in np.unique(ix.receiver[kept]):
        r = ix.receivers[ri]
        if r.port in ("q", "k", "v"):
            for h in r.heads(geo):
                gets[ix.sender_of(Node("head", r.layer, h))] = True
        elif node_of[ri] >= 0:
            gets[node_of[ri]] = True
    flags = {node_name(n): bool(sends[i] and (i == 0 or gets[i])) for i, n in enumerate(ix.senders)}
    flags["logits"] = True
    return flags


# ---------------------------------------------------------------- import


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise PatchboardError(FIELD, f"the name {str(k)[:40]!r} appears twice; every node and edge is listed once")
        d[k] = v
    return d


def parse_graph(text: str | bytes, geo: Geometry | None = None, d_model: int | None = None) -> GraphFile:
    """A graph file's text -> :class:`GraphFile` on ``geo`` (the model it will
    run on; None: the file's own cfg, which must describe a sequential
    model). One-line errors name what is wrong; nothing is trusted: the size
    and nesting are checked before parsing, every name against the graph."""
    if isinstance(text, bytes):
        if len(text) > MAX_GRAPH_BYTES:
            raise PatchboardError(FIELD, f"the file is {len(text)} bytes; the limit is {MAX_GRAPH_BYTES} (MAX_GRAPH_BYTES)")
        if text[:2] == b"\x1f\x8b":
            text = _gunzip(text)
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PatchboardError(FIELD, f"not UTF-8 text (byte {e.start}); give the graph JSON EAP-IG writes") from None
    if not isinstance(text, str) or not text.strip():
        raise PatchboardError(FIELD, "empty; give a graph JSON with cfg, nodes and edges (EAP-IG's Graph.to_json)")
    check_text(text, FIELD, MAX_GRAPH_BYTES, "graph file", "MAX_GRAPH_BYTES")
    if json_depth(text) > 4:
        raise PatchboardError(FIELD, "nested deeper than a graph file is (cfg, nodes and edges hold flat objects)")
    try:
        d = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_node_constant)
    except PatchboardError:
        raise
    except (ValueError, RecursionError) as e:
        raise PatchboardError(FIELD, f"not valid JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(d, dict):
        raise PatchboardError(FIELD, "expected a JSON object with cfg, nodes and edges")
    extra = sorted(set(d) - {"cfg", "nodes", "edges", NOTE_KEY})
    if extra or not {"cfg", "nodes", "edges"} <= set(d):
        missing = sorted({"cfg", "nodes", "edges"} - set(d))
        raise PatchboardError(FIELD, f"unknown key {extra[0][:40]!r}" if extra else f"missing {', '.join(missing)}"
                              "; a graph file has cfg, nodes and edges")
    cfg = _check_cfg(d["cfg"], geo, d_model)
    file_geo = Geometry(cfg["n_layers"], cfg["n_heads"], cfg.get("n_key_value_heads", cfg["n_heads"]))
    geo = geo or file_geo
    ix = EdgeIndex.of(geo)
    flags, node_scores = _check_nodes(d["nodes"], geo)
    in_graph, scores = _check_edges(d["edges"], geo, ix)
    note = d.get(NOTE_KEY) or {}
    if not isinstance(note, dict) or any(not isinstance(k, str) or not isinstance(v, (str, int, float, bool)) or
                                          (isinstance(v, str) and len(v) > 2000) for k, v in note.items()) or len(note) > 64:
        raise PatchboardError(FIELD, f"{NOTE_KEY!r} must be a small object of plain values")
    return GraphFile(geo, in_graph, scores, cfg, flags, node_scores, dict(note))


def _gunzip(data: bytes) -> bytes:
    """A gzip-compressed graph file, inflated to at most MAX_GRAPH_BYTES (a
    crafted file cannot inflate without bound)."""
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_GRAPH_BYTES + 1)
    except zlib.error:
        raise PatchboardError(FIELD, "not a readable gzip file (truncated?); give the graph JSON or its .json.gz") from None
    if len(out) > MAX_GRAPH_BYTES or inflater.unconsumed_tail:
        raise PatchboardError(FIELD, f"the file inflates past {MAX_GRAPH_BYTES} bytes (MAX_GRAPH_BYTES)")
    if not inflater.eof:
        raise PatchboardError(FIELD, "a truncated gzip file; give the whole graph file")
    return out


def _reject_node_constant(name: str):
    # NaN is how EAP-IG writes an unscored node; edges are checked for finite scores below.
    if name == "NaN":
        return float("nan")
    raise PatchboardError(FIELD, f"{name} is not a score; write finite numbers")


def _check_cfg(cfg: Any, geo: Geometry | None, d_model: int | None) -> dict:
    if not isinstance(cfg, dict):
        raise PatchboardError(FIELD, "cfg must be an object such as {\"n_layers\": 12, \"n_heads\": 12, \"parallel_attn_mlp\": false, \"d_model\": 768}")
    extra = sorted(set(cfg) - _CFG_KEYS)
    if extra:
        raise PatchboardError(FIELD, f"cfg: unknown key {extra[0][:40]!r}; it has {', '.join(sorted(_CFG_KEYS))}")
    for k in ("n_layers", "n_heads"):
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            raise PatchboardError(FIELD, f"cfg: {k} must be a whole number from 1 to 4096, got {str(v)[:20]}")
    kv = cfg.get("n_key_value_heads", cfg["n_heads"])
    if isinstance(kv, bool) or not isinstance(kv, int) or not 1 <= kv <= cfg["n_heads"] or cfg["n_heads"] % kv:
        raise PatchboardError(FIELD, f"cfg: n_key_value_heads must divide n_heads, got {str(kv)[:20]}")
    if cfg.get("parallel_attn_mlp", False) is not False:
        raise PatchboardError(FIELD, "cfg: parallel_attn_mlp must be false; Patchboard's graph has sequential blocks")
    if "d_model" in cfg and (isinstance(cfg["d_model"], bool) or not isinstance(cfg["d_model"], int) or cfg["d_model"] < 0):
        raise PatchboardError(FIELD, "cfg: d_model must be a whole number")
    if geo is not None:
        if (cfg["n_layers"], cfg["n_heads"]) != (geo.n_layers, geo.n_heads):
            raise PatchboardError(FIELD, f"the file is for a model with {cfg['n_layers']} layers x {cfg['n_heads']} heads; "
                                  f"this model has {geo.n_layers} x {geo.n_heads}")
        if "n_key_value_heads" in cfg and kv != geo.n_kv:
            raise PatchboardError(FIELD, f"the file is for {kv} key/value heads; this model has {geo.n_kv}")
        if d_model and cfg.get("d_model") not in (None, 0, d_model):
            raise PatchboardError(FIELD, f"the file is for d_model {cfg['d_model']}; this model has {d_model}")
    n_edges_bound = cfg["n_layers"] * (3 * cfg["n_heads"] + 1) * (1 + cfg["n_layers"] * (cfg["n_heads"] + 1))
    if n_edges_bound > 10_000_000:
        raise PatchboardError(FIELD, f"cfg describes a graph of over 10 million edges ({cfg['n_layers']} layers x {cfg['n_heads']} heads); too large to exchange as JSON")
    return dict(cfg)


def _check_nodes(nodes: Any, geo: Geometry) -> tuple[dict[str, bool], dict[str, float] | None]:
    if not isinstance(nodes, dict):
        raise PatchboardError(FIELD, "nodes must be an object of {name: {\"in_graph\": bool}}")
    want = eap_nodes(geo)
    if set(nodes) != set(want):
        extra = sorted(set(nodes) - set(want))
        missing = [n for n in want if n not in nodes]
        what = f"node {extra[0][:40]!r} is not in this model's graph" if extra else f"node {missing[0]!r} is missing"
        raise PatchboardError(FIELD, f"{what}; the nodes are input, a{{L}}.h{{H}}, m{{L}} and logits of {geo.n_layers} layers x {geo.n_heads} heads")
    flags: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for name in want:
        v = nodes[name]
        if not isinstance(v, dict) or not isinstance(v.get("in_graph"), bool):
            raise PatchboardError(FIELD, f"node {name}: expected {{\"in_graph\": true|false}}")
        bad = sorted(set(v) - {"in_graph", "score"})
        if bad:
            what = "neuron-level graphs are not supported" if bad[0].startswith("neurons") else f"unknown key {bad[0][:30]!r}"
            raise PatchboardError(FIELD, f"node {name}: {what}")
        flags[name] = v["in_graph"]
        if "score" in v:
            s = v["score"]
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise PatchboardError(FIELD, f"node {name}: score must be a number")
            scores[name] = float(s)
    if scores and len(scores) != len(want) - 1 and len(scores) != len(want):
        raise PatchboardError(FIELD, "node scores are given for some nodes only; give them for every node or none")
    return flags, (scores or None)


def _check_edges(edges: Any, geo: Geometry, ix: EdgeIndex) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(edges, dict):
        raise PatchboardError(FIELD, "edges must be an object of {\"A->B\": {\"score\": x, \"in_graph\": bool}}")
    order = _eap_edges(geo)
    if len(edges) != len(order):
        raise PatchboardError(FIELD, f"{len(edges)} edges; this model's graph ({geo.n_layers} layers x {geo.n_heads} heads) has {len(order)}")
    in_graph = np.zeros(ix.n_edges, dtype=bool)
    scores = np.zeros(ix.n_edges, dtype=np.float64)
    seen_group: dict[int, tuple[str, bool]] = {}
    for name, e in order:
        v = edges.get(name)
        if v is None:
            names = {n for n, _ in order}
            extra = next((k for k in edges if k not in names), None)
            raise PatchboardError(FIELD, f"edge {str(extra)[:60]!r} is not in this model's graph" if extra is not None else f"edge {name} is missing")
        if not isinstance(v, dict) or set(v) != {"score", "in_graph"} or not isinstance(v["in_graph"], bool):
            raise PatchboardError(FIELD, f"edge {name}: expected {{\"score\": number, \"in_graph\": true|false}}")
        s = v["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise PatchboardError(FIELD, f"edge {name}: score must be a finite number")
        if geo.gqa and name.endswith(("<k>", "<v>")):
            if e in seen_group:
                first, flag = seen_group[e]
                if flag != v["in_graph"]:
                    raise PatchboardError(FIELD, f"edge {name} and {first} feed the same key/value group, but only one is in the graph; "
                                          "this model computes one key and one value per group, so they are kept or ablated together")
                scores[e] += float(s)
            else:
                seen_group[e] = (name, v["in_graph"])
                scores[e] = float(s)
                in_graph[e] = v["in_graph"]
        else:
            scores[e] = float(s)
            in_graph[e] = v["in_graph"]
    return in_graph, scores


def circuit_note(**items: Any) -> dict:
    """What Patchboard writes under ``"patchboard"``: plain values only."""
    return {k: v for k, v in items.items() if isinstance(v, (str, int, float, bool))}
