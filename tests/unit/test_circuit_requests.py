"""The circuit requests (patching.circuit_requests): canonical forms and keys,
links that round-trip, parameters checked before any model, and the circuit
parsers fuzzed (only the project's one-line errors, never another exception)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patching import service
from patching.circuit_requests import CIRCUIT_FIELDS, CircuitCurve, CircuitEval
from patching.core.errors import PatchboardError
from patching.core.spec import Spec
from patching.methods.circuit_graph import EdgeIndex, parse_edges
from patching.methods.graph import Geometry
from patching.methods.graph_json import export_graph, parse_graph

GEO = Geometry(30, 9, 3)
FP = "0123456789abcdef"
FUZZ = settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def test_equal_circuits_have_equal_keys_whatever_their_spelling():
    geo = Geometry(4, 4, 2)
    spec = Spec(task="ioi", n_pairs=8)
    a = CircuitEval(spec, "embed->3.*:q, 3.*->logits")
    b = CircuitEval(spec, "3-3.0-3->logits\nembed -> 3.*:q  # the same edges")
    hyp = {"paths": [{"sender": "embed", "receiver": "3.*:q"}, {"sender": "3.*", "receiver": "logits"}]}
    c = CircuitEval(spec, json.dumps(hyp))
    ix = EdgeIndex.of(geo)
    g = CircuitEval(spec, export_graph(geo, np.isin(np.arange(ix.n_edges), parse_edges(a.edges, geo)), d_model=64))
    keys = {service.key_of(r, FP, geo) for r in (a, b, c, g)}
    assert len(keys) == 1
    assert service.key_of(CircuitEval(spec, "embed->3.*:q"), FP, geo) not in keys
    assert service.key_of(CircuitEval(Spec(task="ioi", n_pairs=8, direction="noise"), a.edges), FP, geo) in keys  # direction unused
    canon = a.canonical(geo)
    assert canon.edges == a.edges and len(canon.parsed) == 4 + 4 and canon.params()["n_edges"] == 8
    assert g.canonical(geo).edges.startswith("embed->3.0:q,")  # a graph file becomes its edges


def test_links_round_trip():
    spec = Spec(task="ioi", n_pairs=8)
    ev = CircuitEval(spec, "embed->*, *->logits").canonical(GEO)
    back = CircuitEval.from_query(spec.to_query() | ev.query()).canonical(GEO)
    assert back.digest == ev.digest and back.spec == ev.spec
    cur = CircuitCurve(spec, scoring="eap_ig", ig_steps=7, random=4, rank="signed").canonical(None)
    again = CircuitCurve.from_query(cur.spec.to_query() | cur.query()).canonical(None)
    assert again == cur and again.score_seed == 1  # -1: the evaluation seed + 1
    assert service.key_of(again, FP) == service.key_of(cur, FP)
    assert service.key_of(CircuitCurve(spec, random=5), FP) != service.key_of(CircuitCurve(spec, random=6), FP)
    # Parameters that do not apply do not split keys.
    assert CircuitCurve(spec, ig_steps=9).canonical(None).ig_steps == 5
    assert CircuitCurve(spec, grid="mib", points=3).canonical(None).points == 20


@pytest.mark.parametrize("kw,field", [
    (dict(scoring="exactly"), "scoring"), (dict(random=-1), "random"), (dict(points=1), "points"), (dict(rank="size"), "rank"),
    (dict(score_seed=-2), "score-seed"),
])
def test_bad_curve_parameters_name_their_flag(kw, field):
    with pytest.raises(PatchboardError) as e:
        CircuitCurve(Spec(), **kw).canonical(None)
    assert e.value.field == field


def test_eap_ig_needs_a_second_input():
    with pytest.raises(PatchboardError, match="eap_ig interpolates"):
        CircuitCurve(Spec(corruption="mean"), scoring="eap_ig").canonical(None)


def test_cli_refuses_a_bad_circuit_before_loading_a_model(tmp_path, monkeypatch, capsys):
    from patching.cli import main
    from patching.core.registry import REGISTRY

    monkeypatch.setenv("PATCHBOARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(REGISTRY, "get", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded a model")))
    monkeypatch.setattr("patching.service.geometry_for", lambda name: GEO)
    assert main(["circuit", "eval", "--task", "ioi", "--edges", "mlp29->0.0:q"]) == 2
    assert "does not read" in capsys.readouterr().err
    assert main(["circuit", "curve", "--task", "ioi", "--random", "999"]) == 2
    assert main(["circuit", "eval", "--task", "ioi", "--graph", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


hostile = st.sampled_from(["*", "->", "→", ",", "\n", "#", "embed", "logits", "mlp", "9", "99999999999999999999", "0-29", ".", ":q",
                           ":k", ":x", "\ud800", "{", "[" * 40, "-", " ", "\x00"])
circuit_text = st.lists(st.one_of(hostile, st.text(max_size=6)), max_size=12).map("".join)


@FUZZ
@given(circuit_text)
def test_fuzz_circuit_grammar(text):
    try:
        ids = parse_edges(text, GEO)
        assert ids.ndim == 1 and (ids >= 0).all() and (ids < EdgeIndex.of(GEO).n_edges).all()
    except PatchboardError as e:
        assert e.field == "edges" and "\n" not in str(e)


@FUZZ
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=8)),
                    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.sampled_from(["cfg", "nodes", "edges", "n_layers",
                                                                                                     "n_heads", "input->logits", "in_graph",
                                                                                                     "score", "x"]), c, max_size=4)),
                    max_leaves=20))
def test_fuzz_graph_files(obj):
    try:
        text = json.dumps(obj)
    except ValueError:
        return
    try:
        parse_graph(text, Geometry(2, 2, 2))
    except PatchboardError as e:
        assert e.field == "graph" and "\n" not in str(e)


def test_the_link_carries_the_circuit_compressed():
    text = "embed->*, *->logits"
    p = CIRCUIT_FIELDS["edges"]
    assert p.parse(p.format(text)) == text
    with pytest.raises(PatchboardError):
        p.parse("not!base64")
