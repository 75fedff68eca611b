"""Circuits as edge sets (patching.methods.circuit_graph): the edge index, the
circuit grammar and its errors, EAP-IG's prune (against the reference's loop
re-implemented on its own matrix layout), and circuits from hypotheses."""

from __future__ import annotations

import numpy as np
import pytest

from patching.core.errors import PatchboardError
from patching.methods.circuit_graph import (EdgeIndex, canonical_text, digest, hypothesis_edges, parse_edges, path_circuit, prune,
                                            to_hypothesis)
from patching.methods.graph import Geometry, Node, Receiver
from patching.methods.graph_json import eap_edges, eap_nodes
from patching.methods.hypothesis_format import parse

SMOL = Geometry(30, 9, 3)  # the embedded SmolLM2
TINY = Geometry(3, 4, 2)
MHA = Geometry(3, 4, 4)


def test_edge_count_and_order():
    ix = EdgeIndex.of(SMOL)
    assert ix.n_edges == 70_651  # the number the Paths page's EAP reports for receivers '*'
    assert ix.label(0) == "embed->0.0:q"
    assert ix.label(ix.n_edges - 1) == "mlp29->logits"
    for e in np.random.default_rng(0).integers(0, ix.n_edges, 200):
        s, r = ix.senders[ix.sender[e]], ix.receivers[ix.receiver[e]]
        assert r.reads(s, SMOL.n_layers) and ix.edge(s, r) == e
    with pytest.raises(KeyError):
        ix.edge(Node("mlp", 2), Receiver("q", 1, 0))


def test_grammar_items_wildcards_comments_and_canonical_text():
    ix = EdgeIndex.of(TINY)
    ids = parse_edges("embed->*  # every edge out of embed\n2.*->logits, mlp0 → 1.1:k", TINY)
    labels = set(ix.labels(ids))
    assert "embed->logits" in labels and "embed->0.3:q" in labels and "mlp0->1.0:k" in labels  # 1.1:k is KV group 0 (1.0:k)
    assert "2.3->logits" in labels and len([x for x in labels if x.startswith("embed->")]) == len(ix.receivers)
    assert parse_edges("*->*", TINY).size == ix.n_edges
    assert parse_edges("", TINY).size == 0
    text = canonical_text(ids, TINY)
    assert np.array_equal(parse_edges(text, TINY), ids)
    assert digest(ids, TINY) == digest(parse_edges(text, TINY), TINY) != digest(ids[:-1], TINY)


@pytest.mark.parametrize("text,fragment", [
    ("embed", "SENDER->RECEIVER"),
    ("mlp2->1.0:q", "does not read"),
    ("5.0->logits", "does not exist"),
    ("2.*->0.*:q", "no receiver"),
    ("embed->2.1", "which input"),
    ("logits->2.1:q", "receiver, not a node"),
])
def test_grammar_errors_name_the_item(text, fragment):
    with pytest.raises(PatchboardError) as e:
        parse_edges(text, TINY)
    assert fragment in str(e.value) and "edges" == e.value.field


def test_grammar_bounds_the_text_before_work():
    with pytest.raises(PatchboardError, match="MAX_TEXT_CHARS"):
        parse_edges("embed->logits," * 200_000, TINY)


def _eap_ig_prune(geo: Geometry, in_graph_edges: np.ndarray) -> np.ndarray:
    """hannamw/EAP-IG ``Graph.prune`` on its own layout: forward (source)
    nodes x backward (q/k/v per head, MLP, logits) matrix, looped to a fixed point."""
    n_f = 1 + geo.n_layers * (geo.n_heads + 1)
    names = eap_nodes(geo)
    fwd = {n: i for i, n in enumerate(names[:-1])}
    dst = []
    for l in range(geo.n_layers):
        dst += [f"a{l}.h{h}<{p}>" for p in "qkv" for h in range(geo.n_heads)] + [f"m{l}"]
    dst.append("logits")
    bwd = {n: i for i, n in enumerate(dst)}
    f2b = np.zeros((n_f, len(dst)), dtype=bool)
    for name, j in bwd.items():
        node = name.split("<")[0]
        if node != "logits":
            f2b[fwd[node], j] = True
    M = np.zeros((n_f, len(dst)), dtype=bool)
    for name, e in eap_edges(geo):
        parent, child = name.split("->")
        M[fwd[parent], bwd[child]] = in_graph_edges[e]
    nodes = np.zeros(n_f, dtype=bool)
    while True:
        out_ = M.any(1)
        in_ = (M.any(0).astype(float) @ f2b.T.astype(float)) > 0
        in_[0] = True
        old_nodes, old_M = nodes.copy(), M.copy()
        nodes = out_ & in_
        back = nodes.astype(float) @ f2b.astype(float)
        back[-1] = 1
        M = M & (np.outer(nodes, back) > 0)
        if (old_nodes == nodes).all() and (old_M == M).all():
            break
    out = np.zeros_like(in_graph_edges)
    for name, e in eap_edges(geo):
        parent, child = name.split("->")
        out[e] = M[fwd[parent], bwd[child]]
    return out


@pytest.mark.parametrize("p", [0.03, 0.1, 0.3, 0.7])
def test_prune_is_eap_igs(p):
    ix = EdgeIndex.of(MHA)
    rng = np.random.default_rng(int(p * 100))
    masks = rng.random((6, ix.n_edges)) < p
    ours = prune(masks, ix)
    for m, o in zip(masks, ours):
        assert np.array_equal(o, _eap_ig_prune(MHA, m))
    assert np.array_equal(prune(ours, ix), ours)  # a fixed point


def test_path_circuit_holds_the_edge_its_upstream_and_downstream():
    ix = EdgeIndex.of(TINY)
    s, r = Node("head", 1, 2), Receiver("q", 2, 0)
    m = path_circuit(s, r, TINY)
    labels = set(ix.labels(np.flatnonzero(m)))
    assert "1.2->2.0:q" in labels and "embed->1.2:q" in labels and "0.0->mlp0" in labels  # the edge; into s; upstream
    assert "1.2->2.1:q" not in labels and "0.0->2.0:q" not in labels  # s's other edges; earlier nodes into r
    assert "2.0->logits" in labels and "2.3->logits" in labels  # downstream of r's layer
    only = path_circuit(Node("embed"), Receiver("logits", 3), TINY)
    assert ix.labels(np.flatnonzero(only)) == ["embed->logits"]


def test_hypotheses_become_circuits_and_back():
    hyp = parse({"paths": [{"sender": ["embed", "0.1"], "receiver": "2.3:q"}, {"sender": "2.3", "receiver": "logits"}]}, TINY)
    ids = hypothesis_edges(hyp)
    assert sorted(EdgeIndex.of(TINY).labels(ids)) == ["0.1->2.3:q", "2.3->logits", "embed->2.3:q"]
    back = hypothesis_edges(parse(to_hypothesis(ids, TINY), TINY))
    assert np.array_equal(back, ids)
    with pytest.raises(PatchboardError, match="every position"):
        hypothesis_edges(parse({"paths": [{"sender": "embed", "receiver": "logits", "positions": "END"}]}, TINY))
