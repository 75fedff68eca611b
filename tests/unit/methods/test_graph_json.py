"""EAP-IG / MIB graph JSON (patching.methods.graph_json): MIB's own example
file round-trips byte for byte, grouped-query models export and import
consistently, and bad files are refused in one line before anything is built.

tests/data/mib/ioi-eap-ig.json.gz is ``circuits/ioi-eap-ig.json`` of
hannamw/MIB-circuit-track (commit b759df3, Apache-2.0): GPT-2 small's IOI
circuit found by EAP-IG, written by EAP-IG's ``Graph.to_json``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from patching.core.errors import PatchboardError
from patching.methods.circuit_graph import EdgeIndex, prune
from patching.methods.graph import Geometry
from patching.methods.graph_json import eap_edges, export_graph, parse_graph

MIB = Path(__file__).resolve().parents[2] / "data" / "mib" / "ioi-eap-ig.json.gz"
GQA = Geometry(3, 4, 2)


@pytest.fixture(scope="module")
def mib_text() -> str:
    return gzip.decompress(MIB.read_bytes()).decode("utf-8")


def test_mibs_example_round_trips_byte_for_byte(mib_text):
    g = parse_graph(mib_text)
    assert g.geo == Geometry(12, 12, 12) and g.cfg["d_model"] == 768
    assert int(g.in_graph.sum()) == 756 and len(g.scores) == EdgeIndex.of(g.geo).n_edges == 32_491
    # As given (its node flags), and with the node flags EAP-IG derives after pruning: the same bytes.
    assert export_graph(g.geo, g.in_graph, g.scores, cfg=g.cfg, node_flags=g.node_flags) == mib_text
    assert export_graph(g.geo, g.in_graph, g.scores, d_model=768) == mib_text
    # MIB's circuit is already pruned (apply_topn(prune=True)).
    assert np.array_equal(prune(g.in_graph, EdgeIndex.of(g.geo)), g.in_graph)
    # Edge names map to Patchboard's edges.
    ix = EdgeIndex.of(g.geo)
    names = dict(eap_edges(g.geo))
    assert ix.label(names["input->a2.h5<q>"]) == "embed->2.5:q" and ix.label(names["a0.h1->m3"]) == "0.1->mlp3"
    assert ix.label(names["m11->logits"]) == "mlp11->logits"
    d = json.loads(mib_text)
    assert g.scores[names["a11.h10->logits"]] == d["edges"]["a11.h10->logits"]["score"]


def test_grouped_query_export_and_import():
    ix = EdgeIndex.of(GQA)
    rng = np.random.default_rng(0)
    in_graph = rng.random(ix.n_edges) < 0.3
    scores = rng.normal(size=ix.n_edges)
    text = export_graph(GQA, in_graph, scores, d_model=64)
    d = json.loads(text)
    assert d["cfg"]["n_key_value_heads"] == 2
    # One k edge per query head (as EAP-IG ungroups), the group's flag on each, its score shared out.
    e = ix.edge(ix.senders[0], ix.receivers[ix.receiver_of_port("k", 1, 0)])
    assert d["edges"]["input->a1.h0<k>"]["in_graph"] == d["edges"]["input->a1.h1<k>"]["in_graph"] == bool(in_graph[e])
    assert d["edges"]["input->a1.h0<k>"]["score"] == scores[e] / 2
    back = parse_graph(text, GQA)
    assert np.array_equal(back.in_graph, in_graph)
    assert np.allclose(back.scores, scores, rtol=1e-15, atol=0)
    d["edges"]["input->a1.h1<k>"]["in_graph"] = not d["edges"]["input->a1.h0<k>"]["in_graph"]
    with pytest.raises(PatchboardError, match="same key/value group"):
        parse_graph(json.dumps(d), GQA)


def _small() -> dict:
    geo = Geometry(2, 2, 2)
    return json.loads(export_graph(geo, np.zeros(EdgeIndex.of(geo).n_edges, dtype=bool), d_model=8))


@pytest.mark.parametrize("edit,fragment", [
    (lambda d: d.pop("nodes"), "missing nodes"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["cfg"].update(n_layers=3), "3 layers x 2 heads"),
    (lambda d: d["cfg"].update(parallel_attn_mlp=True), "parallel_attn_mlp"),
    (lambda d: d["cfg"].update(bias=1), "cfg: unknown key"),
    (lambda d: d["nodes"].pop("m1"), "node 'm1' is missing"),
    (lambda d: d["nodes"]["a0.h0"].update(neurons=[True]), "neuron-level"),
    (lambda d: d["edges"].pop("input->logits"), "edges; this model's graph"),
    (lambda d: d["edges"]["input->logits"].update(score="x"), "finite number"),
    (lambda d: d["edges"]["input->logits"].update(in_graph=1), "in_graph"),
    (lambda d: d["edges"].update({"a0.h0->a0.h1<q>": d["edges"].pop("input->logits")}), "not in this model's graph"),
])
def test_bad_files_are_refused_in_one_line(edit, fragment):
    d = _small()
    edit(d)
    with pytest.raises(PatchboardError) as e:
        parse_graph(json.dumps(d), Geometry(2, 2, 2))
    assert fragment in str(e.value) and e.value.field == "graph" and "\n" not in str(e.value)


def test_gzip_files_inflate_within_the_bound(mib_text):
    assert parse_graph(MIB.read_bytes()).in_graph.sum() == 756  # MIB's file, gzipped
    with pytest.raises(PatchboardError, match="inflates past"):
        parse_graph(gzip.compress(b" " * (33 << 20)))
    with pytest.raises(PatchboardError, match="truncated"):
        parse_graph(MIB.read_bytes()[:1000])


def test_structure_is_checked_before_parsing():
    text = json.dumps(_small())
    with pytest.raises(PatchboardError, match="appears twice"):
        parse_graph(text[:-1] + ', "cfg": {}}', Geometry(2, 2, 2))
    with pytest.raises(PatchboardError, match="nested deeper"):
        parse_graph('{"cfg": ' + "[" * 50 + "]" * 50 + "}", Geometry(2, 2, 2))
    with pytest.raises(PatchboardError, match="finite"):
        parse_graph(text.replace('"score": 0.0', '"score": Infinity', 1), Geometry(2, 2, 2))
    with pytest.raises(PatchboardError, match="MAX_GRAPH_BYTES"):
        parse_graph(b" " * (33 << 20), Geometry(2, 2, 2))
    with pytest.raises(PatchboardError, match="over 10 million"):
        parse_graph(json.dumps({"cfg": {"n_layers": 4000, "n_heads": 4000}, "nodes": {}, "edges": {}}))
